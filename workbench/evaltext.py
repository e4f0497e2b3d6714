"""The small text the sweep measures perplexity on (written for this project; public domain).

It is plain English prose of the kind small chat models see, long enough for a few hundred
tokens with any tokenizer. Perplexity on random-weight samples is near the vocabulary size;
what a sweep reads is how much each recipe moves it away from fp32.
"""

EVAL_TEXT = (
    "The harbour town woke slowly. Fishing boats came in with the tide, and the market stalls "
    "opened one after another along the quay. A baker carried trays of warm bread to the cafe on "
    "the corner, where two old friends argued about the weather as they did every morning. One of "
    "them said that rain would come before noon; the other pointed at the clear sky and laughed. "
    "Children ran past on their way to school, and a dog followed them as far as the bridge before "
    "it turned back to sleep in the sun. At the end of the pier, a woman repaired a net with quick, "
    "careful hands. She had learned the work from her father, who had learned it from his mother, "
    "and she liked to say that every knot held a small piece of the family story. By midday the "
    "clouds had gathered over the hills, and the first drops of rain fell on the stones of the "
    "square. The friend who had promised rain said nothing at all, but he smiled as he finished "
    "his coffee and paid for both cups. In the afternoon the boats went out again, their engines "
    "low and steady, and the town settled into the quiet rhythm it had kept for a hundred years."
)

__all__ = ["EVAL_TEXT"]
