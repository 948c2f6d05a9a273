"""Per-step plans and their builders: ``plan`` (the finished :class:`AttnPlan`), ``build``
(``build_plan``), ``indices`` (offsets and page tables from an engine's lengths), ``schedule``
(key splits and the provider per workload), ``spec_tree`` (speculative key lists), ``graph``
(CUDA-graph storage filled in place), ``views`` (an engine's cache in a plan's pages),
``validate`` (a plan's own checks)."""
