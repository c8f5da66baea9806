"""The command lines: ``abstain X`` is ``serve/cli/X.py`` (its ``register_X`` adds the subcommand).

``main`` is the console script; every subcommand arrives through the entry-point group
``abstain.commands`` (``pyproject.toml``), so ``serve`` never names ``training``. ``argtypes``
(validated numeric flags), ``console`` (rich output), ``examples`` (the start-up banner's
requests), ``model_inputs`` (the model, data and data roles of calibrate and evaluate) and
``from_feedback`` (calibrate's ``--from-feedback`` flags, refusals and table) serve the commands. The only package of ``serve`` that parses arguments.

May import: everything in ``serve``. Never ``training``, ``bench`` or torch.
"""

__all__ = ["argtypes", "calibrate", "console", "evaluate", "examples", "from_feedback", "main",
           "model_inputs", "package", "review", "serve"]
