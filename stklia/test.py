"""`python -m stklia.test ...`: the earlier name of `python -m stklia.evaluate`, kept for existing scripts."""

import runpy

if __name__ == "__main__":
    runpy.run_module("stklia.evaluate", run_name="__main__", alter_sys=True)
