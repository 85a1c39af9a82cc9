"""What PEFT's fbd_cuda extension computes (peft/tuners/boft/fbd/fbd_cuda_kernel.cu), on the CPU:
the blocks of [m, N, b, b] on the diagonal of [m, N b, N b], and the gradient back. Without the
extension PEFT 0.21.2 forces a BOFT layer to m = 1 (docs/families.md 1.1), so PEFT's m > 1 layers
exist on a CPU only with this installed as ``peft.tuners.boft.layer._FBD_CUDA``. Shared by the
fixture generator, the tests and the benchmark."""
import torch


class FbdStandIn:
    @staticmethod
    def forward(blocks):
        m, count, b, _ = blocks.shape
        out = blocks.new_zeros(m, count * b, count * b)
        for g in range(count):
            out[:, g * b:(g + 1) * b, g * b:(g + 1) * b] = blocks[:, g]
        return [out]

    @staticmethod
    def backward(grad, blocks):
        b = blocks.shape[-1]
        return [torch.stack([grad[:, g * b:(g + 1) * b, g * b:(g + 1) * b]
                             for g in range(blocks.shape[1])], dim=1).contiguous()]
