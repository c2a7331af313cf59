"""A Dynamo backend for tests: runs each captured FX graph as it is and counts graphs and calls.

Inductor needs about a minute per graph on a 2-core CPU; this keeps Dynamo's capture of the real
model (guards, recompiles, graph breaks) and skips only the code generation.
"""


class CountingBackend:
    """Pass as ``torch.compiler.set_stance("default", force_backend=CountingBackend())``."""

    def __init__(self):
        self.graphs = 0
        self.calls = 0

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1

        def run(*args):
            self.calls += 1
            return graph_module.forward(*args)

        return run
