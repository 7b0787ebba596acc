"""What every part of namegen shares: the artifact contract (`namegen.contract`) and the command-line
conventions (`namegen.argparsing`). Nothing here imports torch, onnx, numpy or FastAPI."""
