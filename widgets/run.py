"""The Run panel: a prompt, sampling settings, Generate (streaming) and Stop, the speed
figures, and the same prompt through transformers (and the re-authored model) beside it.

    panel = RunPanel(Runner("out/model.tflite", tokenizer="sample_models/llama-tiny"),
                     hf_dir="sample_models/llama-tiny", bundle="out/model.litertlm")
    panel.generate(); panel.wait()
    panel.engine.value = "litert-lm"; panel.generate(); panel.wait()   # the bundle in LiteRT-LM

The engine choice needs a .litertlm bundle (the runner's own model, or `bundle`): LiteRT-LM,
the on-device runtime, runs the bundle in a child process; Side by side then shows both
engines' tokens beside transformers'.
"""

from __future__ import annotations

import html
import threading
from typing import Any, Optional

import ipywidgets as W
import traitlets

from workbench import WorkbenchError
from workbench.runner import ENGINES, SAMPLING, Generation, Runner
from workbench_widgets._common import Background


class RunPanel(W.VBox):
    """Generate with a converted model; nothing here blocks the kernel."""

    state = traitlets.Unicode("idle", help="idle | running | done | failed")
    text = traitlets.Unicode("", help="the continuation generated so far")

    def __init__(self, runner: Runner, hf_dir=None, model=None, bundle=None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.runner, self.hf_dir, self.model = runner, hf_dir, model
        self.bundle = bundle or runner.bundle
        self.runners = {runner.engine: runner}  # one runner per engine, made on first choice
        self.generation: Optional[Generation] = None
        self.error: Optional[WorkbenchError] = None
        self.side: Optional[dict] = None
        small = {"description_width": "90px"}
        self.prompt = W.Textarea(value="Once upon a time", description="prompt", style=small,
                                 layout=W.Layout(width="620px", height="60px"))
        self.sampling = W.Dropdown(options=SAMPLING, value="greedy", description="sampling", style=small,
                                   layout=W.Layout(width="220px"))
        self.temperature = W.BoundedFloatText(value=0.8, min=0.01, max=5, step=0.05, description="temperature",
                                              style=small, layout=W.Layout(width="180px"))
        self.top_k = W.BoundedIntText(value=40, min=1, max=100000, description="top_k", style=small,
                                      layout=W.Layout(width="160px"))
        self.top_p = W.BoundedFloatText(value=0.9, min=0.01, max=1, step=0.05, description="top_p", style=small,
                                        layout=W.Layout(width="160px"))
        self.seed = W.IntText(value=0, description="seed", style=small, layout=W.Layout(width="160px"))
        self.max_new = W.BoundedIntText(value=min(64, runner.model.kv_len - 8), min=1, max=runner.model.kv_len,
                                        description="new tokens", style=small, layout=W.Layout(width="180px"))
        self.chat = W.Checkbox(value=False, description="chat template", indent=False,
                               disabled=not getattr(runner.tokenizer, "chat_template", None))
        self.sampling.observe(lambda _: self._sync(), names="value")
        self.engine = W.Dropdown(options=ENGINES if self.bundle is not None else (runner.engine,),
                                 value=runner.engine, description="engine", style=small,
                                 layout=W.Layout(width="240px"),
                                 tooltip=("ai-edge-litert here, or LiteRT-LM (the on-device runtime) on the bundle"
                                          if self.bundle is not None else "bundle the model (.litertlm) to run it "
                                          "in LiteRT-LM"))
        self.engine.observe(lambda change: self.use_engine(change["new"]), names="value")
        self.generate_button = W.Button(description="Generate", icon="play", button_style="primary")
        self.generate_button.on_click(lambda _: self.generate())
        self.stop_button = W.Button(description="Stop", icon="stop", button_style="warning", disabled=True)
        self.stop_button.on_click(lambda _: self.runner.stop())
        self.side_button = W.Button(description="Side by side", icon="columns", disabled=hf_dir is None,
                                    tooltip="the same prompt, greedy, through transformers (and the re-authored model)")
        self.side_button.on_click(lambda _: self.compare())
        self.output = W.HTML(layout=W.Layout(width="620px"))
        self.speed = W.HTML()
        self.side_html = W.HTML()
        self.header = W.HTML()
        self._work = Background(self, on_error=self._show_error)
        self._header()
        self.children = [
            self.header,
            self.prompt,
            W.HBox([self.sampling, self.temperature, self.top_k, self.top_p]),
            W.HBox([self.seed, self.max_new, self.chat, self.engine]),
            W.HBox([self.generate_button, self.stop_button, self.side_button]),
            self.output, self.speed, self.side_html,
        ]
        self.add_class("ewb-run")
        self._sync()

    def _header(self) -> None:
        r = self.runner
        where = ("LiteRT-LM, the on-device runtime (a child process)" if r.engine == "litert-lm"
                 else "ai-edge-litert's CompiledModel")
        self.header.value = (f"<h3 style='margin:4px 0'>Run {html.escape(r.path.name)}</h3>"
                             f"<span style='color:#777'>{r.model.style} signatures, prefill {r.model.prefills}, "
                             f"kv {r.model.kv_len}, {r.threads} threads, on {where}</span>")

    def use_engine(self, engine: str) -> Optional[Runner]:
        """Switches Generate and Side by side to `engine` (a runner for it is made on first use)."""
        if self._work.busy:
            self.engine.value = self.runner.engine  # one generation at a time
            return None
        try:
            if engine not in self.runners:
                self.runners[engine] = self.runner.with_engine(engine, bundle=self.bundle)
        except WorkbenchError as e:
            self.error, self.state = e, "failed"
            self._show_error(e)
            self.engine.value = self.runner.engine
            return None
        self.runner = self.runners[engine]
        self.chat.disabled = engine == "litert-lm" or not getattr(self.runner.tokenizer, "chat_template", None)
        if self.chat.disabled:
            self.chat.value = False
        self._header()
        return self.runner

    def _sync(self) -> None:
        s = self.sampling.value
        self.temperature.disabled = self.seed.disabled = s == "greedy"
        self.top_k.disabled = s != "top_k"
        self.top_p.disabled = s != "top_p"

    # ---- actions ------------------------------------------------------------------
    def generate(self) -> Optional[threading.Thread]:
        """Starts generating in the background; the text streams into the panel."""
        if self._work.busy:
            return None
        self.text, self.generation = "", None
        self.generate_button.disabled, self.stop_button.disabled = True, False
        self.side_button.disabled = True  # the runner generates one text at a time
        self.speed.value = ""
        kwargs = dict(max_new_tokens=self.max_new.value, sampling=self.sampling.value,
                      temperature=self.temperature.value, top_k=self.top_k.value, top_p=self.top_p.value,
                      seed=self.seed.value, chat=self.chat.value)
        prompt = self.prompt.value
        self._show(prompt)

        def work() -> None:
            for piece in self.runner.stream(prompt, **kwargs):
                self.text += piece
                self._show(prompt)
            self.generation = self.runner.last
            self._show_speed(self.generation)

        def finish() -> None:
            self.generate_button.disabled, self.stop_button.disabled = False, True
            self.side_button.disabled = self.hf_dir is None

        return self._work.start(work, finish=finish)

    def _show_error(self, e: WorkbenchError) -> None:
        self.output.value = (f"<div class='ewb-error' style='color:#c62828;white-space:pre-wrap'>"
                             f"{html.escape(str(e))}</div>")

    def wait(self, timeout: Optional[float] = None) -> Optional[Generation]:
        self._work.join(timeout)
        return self.generation

    def compare(self) -> Optional[dict]:
        """The same prompt, greedy, through transformers (and the re-authored model)."""
        try:
            self.side = self.runner.side_by_side(self.prompt.value, self.hf_dir, self.max_new.value, model=self.model,
                                                 chat=self.chat.value)
        except WorkbenchError as e:
            self.side_html.value = f"<div class='ewb-error' style='color:#c62828'>{html.escape(str(e))}</div>"
            return None
        rows = []
        ref = self.side["ids"]["transformers"]
        for name, ids in self.side["ids"].items():
            first = self.side["first_diff"].get(name)
            verdict = ("reference" if name == "transformers" else
                       "same tokens" if first is None else f"differs from token #{first}")
            shown = (self._marked_text(self.side["text"][name], ref, first) if name == "litert-lm"
                     else self._marked(ids, ref, first))
            rows.append(f"<tr><td><b>{name}</b></td><td>{shown}</td>"
                        f"<td style='white-space:nowrap;padding-left:12px;color:#555'>{verdict}</td></tr>")
        self.side_html.value = ("<table class='ewb-side-by-side'><tr><th>model</th><th>greedy continuation</th>"
                                "<th></th></tr>" + "".join(rows) + "</table>")
        return self.side

    # ---- rendering ----------------------------------------------------------------
    def _show(self, prompt: str) -> None:
        self.output.value = (f"<div class='ewb-run-output' style='white-space:pre-wrap;border:1px solid #ddd;"
                             f"padding:6px;font-family:monospace'><span style='color:#777'>{html.escape(prompt)}"
                             f"</span>{html.escape(self.text)}</div>")

    def _show_speed(self, g: Generation) -> None:
        self.speed.value = (f"<div class='ewb-run-speed'>{len(g.ids)} tokens, stopped by <b>{g.stop_reason}</b> — "
                            f"time to first token <b>{g.ttft_s * 1000:.1f} ms</b>, prefill "
                            f"<b>{g.prefill_tok_s:,.0f}</b> tok/s, decode <b>{g.decode_tok_s:,.1f}</b> tok/s, "
                            f"peak memory {g.peak_rss_bytes / 1e9:.2f} GB</div>")

    def _marked_text(self, text: str, ref: list[int], first: Optional[int]) -> str:
        """LiteRT-LM's text (it returns text, not ids), marked from where the reference's tokens
        stop being a prefix of it."""
        if first is None:
            return html.escape(text)
        head = self.runner.decode_text(ref[:first])
        head = head if text.startswith(head) else ""
        return (f"{html.escape(head)}<span style='background:#ffcdd2'>{html.escape(text[len(head):len(head) + 1]) or '·'}"
                f"</span>{html.escape(text[len(head) + 1:])}")

    def _marked(self, ids: list[int], ref: list[int], first: Optional[int]) -> str:
        """The text, the first differing token on a red background."""
        if first is None or first >= len(ids):
            return html.escape(self.runner.decode_text(ids))
        head = self.runner.decode_text(ids[:first])
        tok = self.runner.decode_text(ids[: first + 1])[len(head):]
        rest = self.runner.decode_text(ids)[len(head) + len(tok):]
        return (f"{html.escape(head)}<span style='background:#ffcdd2'>{html.escape(tok) or '·'}</span>"
                f"{html.escape(rest)}")
