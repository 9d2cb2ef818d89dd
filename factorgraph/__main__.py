"""``python -m factorgraph``: the ``factorgraph`` command line (see :mod:`trainer.cli`).

The CLI is imported lazily inside :func:`_run`, so importing :mod:`factorgraph` never imports ``trainer``.
"""


def _run(argv=None):
    from trainer.cli import main

    return main(argv)


if __name__ == "__main__":
    raise SystemExit(_run())
