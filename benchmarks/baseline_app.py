"""The baseline: the instance as the blog posts build it.

One Gradio app, default queue (one request at a time), calling FunASR's
`AutoModel.generate(input=path, batch_size_s=300)` once per request. Same input and output names
as our app's `/transcribe` event, so one load generator drives both.

    python -m benchmarks.baseline_app --port 7860 --model DIR --vad-model DIR [--punc-model DIR]
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.baseline_app")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--model", required=True)
    p.add_argument("--vad-model", required=True)
    p.add_argument("--punc-model", default=None)
    p.add_argument("--device", default="cuda:0")
    args = p.parse_args(argv)

    import gradio as gr
    from funasr import AutoModel

    model = AutoModel(
        model=args.model,
        vad_model=args.vad_model,
        punc_model=args.punc_model,
        device=args.device,
        disable_update=True,
        disable_pbar=True,
    )

    def transcribe(audio: str, hotwords: str) -> str:
        return model.generate(input=audio, batch_size_s=300)[0]["text"]

    with gr.Blocks() as demo:
        audio = gr.Audio(type="filepath")
        words = gr.Textbox()
        text = gr.Textbox()
        gr.Button("Transcribe").click(transcribe, [audio, words], text, api_name="transcribe")
    demo.queue().launch(server_name="127.0.0.1", server_port=args.port, prevent_thread_lock=False)


if __name__ == "__main__":
    main()
