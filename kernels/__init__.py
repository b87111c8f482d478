"""dgemma_kernels: GPU kernels, each beside its plain-PyTorch reference. (Populated by the quantization work.)"""
