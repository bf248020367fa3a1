"""The engine: plan -> provision -> evaluate -> store.

- :mod:`~benchmark.engine.runner` plans the cells of a run and stores their records;
- :mod:`~benchmark.engine.provision` gives each job its trained source model (cached,
  verified checkpoints);
- :mod:`~benchmark.engine.evaluate` is the one function that evaluates a job (``run`` and
  ``check`` both call it): the scoring side holds the labels, the adapter side runs the
  adapter's hooks;
- :mod:`~benchmark.engine.isolation` runs the adapter side in a separate process (the
  default), optionally inside an OS sandbox;
- :mod:`~benchmark.engine.protocols` are the test-time protocols as objects;
- :mod:`~benchmark.engine.launchers` decide where jobs execute (here, workers, Ray).
"""
