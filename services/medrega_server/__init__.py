"""A MedRegA-compatible, OpenAI-compatible chat server for our reference model.

MedRegA is served behind OpenAI-compatible APIs (lmdeploy, vLLM). This service speaks the same
protocol and the same prompt/answer text (Text→Region, Region→Text, grounded report) but answers
with our small region-aware ONNX model, so any MedRegA client — our own `mllm` backend first —
can run against it end to end without a 40B model and its GPUs.

    python -m services.medrega_server --host 127.0.0.1 --port 8012
"""
