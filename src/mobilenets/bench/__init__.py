"""Every timing harness in one place, behind one command (``mobilenets bench infer|train|detect|export|tradeoff``).

- :mod:`~mobilenets.bench.timing`: timed calls, interleaved rounds, the rows (``BenchResult``);
- :mod:`~mobilenets.bench.photos`: real photo crops and BatchNorm re-estimation (random weights otherwise decay into
  denormals);
- :mod:`~mobilenets.bench.host`: CPU model and ISA flags, versions, load;
- :mod:`~mobilenets.bench.infer` with :mod:`~mobilenets.bench.peers` and :mod:`~mobilenets.bench.models`: inference,
  our paths against peer runtimes, each row labelled by the precision it really runs;
- :mod:`~mobilenets.bench.goals`: the goal ratios, computed from the rows within a precision class;
- :mod:`~mobilenets.bench.train`, :mod:`~mobilenets.bench.detect`, :mod:`~mobilenets.bench.export`,
  :mod:`~mobilenets.bench.tradeoff`: training throughput, detection with post-processing, exported-model latency,
  the V2 Figure 5-style trade-off.

The library measures and returns; the command prints.
"""
