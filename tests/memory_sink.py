"""A TensorSink that keeps the pruned model in memory and can be read back like
the safetensors index (`location`, `key in sink`, `sink.read(keys)`)."""
from prune_job.checkpoint.sparsity import count_layer


class MemorySink:
    def __init__(self):
        self.tensors, self.patterns = {}, {}

    def add(self, name, tensor, pattern=None, pruned=False, transposed=False):
        """Keeps the tensor; counts a pruned one's zeros as the checkpoint writer does."""
        self.tensors[name] = tensor.detach().clone()
        if not pruned:
            return None
        self.patterns[name] = pattern
        return count_layer(name, tensor, pattern, transposed)

    @property
    def location(self):
        return self.tensors

    def __contains__(self, key):
        return key in self.tensors

    def read(self, keys):
        return {k: self.tensors[k] for k in keys}
