"""microvm-agent's in-process reseed for Python: loaded at start-up through PYTHONPATH.

The agent puts this directory first on PYTHONPATH for the app it starts. This file starts the
helper (``_microvm_reseed``), then runs the image's own ``sitecustomize``, if it has one, as if
this file were not here. Nothing in it may stop the program from starting: every failure is
swallowed (and said once on stderr when MICROVM_AGENT_INPROC_DEBUG is set).
"""


def _start():
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        import _microvm_reseed

        _microvm_reseed.start()
    except Exception as e:  # never stop the app
        if os.environ.get("MICROVM_AGENT_INPROC_DEBUG"):
            print("microvm-agent reseed: not started: %r" % (e,), file=sys.stderr)
    # The image's own sitecustomize, found on the path without this directory.
    try:
        import importlib.machinery
        import importlib.util

        rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
        spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
        if spec is not None and spec.loader is not None:
            module = importlib.util.module_from_spec(spec)
            sys.modules["sitecustomize"] = module
            spec.loader.exec_module(module)
    except Exception:
        # As Python itself does for a failing sitecustomize: report, continue.
        import traceback

        print("Error in sitecustomize; set PYTHONVERBOSE for traceback:", file=sys.stderr)
        traceback.print_exc()


_start()
del _start
