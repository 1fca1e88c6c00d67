"""Head profiles chosen on dev data for shipped models (JSON; see :mod:`steerc.steering.profiles`)."""
