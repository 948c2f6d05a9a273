"""What attention computes, independent of any kernel or plan builder: ``params`` (per-layer
settings), ``masks`` and ``spans`` (mask/bias layouts, bidirectional spans), ``checks``
(argument validation), ``reference`` (the chunked PyTorch oracle and CPU path)."""
