"""Conv+BN building blocks with the attribute names release-2.3 checkpoints use.

PaddleSeg names the parts `_conv` and `_batch_norm`; the checkpoint keys depend
on it, so these names are part of the file format, not a style choice.
"""
import paddle.nn as nn
import paddle.nn.functional as F


class ConvBN(nn.Layer):
    """Conv2D followed by BatchNorm2D (eps 1e-5, momentum 0.9: Paddle's defaults,
    which is what PaddleSeg's SyncBatchNorm becomes on CPU)."""

    relu = False

    def __init__(self, in_ch, out_ch, kernel_size, stride=1, padding="same", bias=True):
        super().__init__()
        self._conv = nn.Conv2D(
            in_ch, out_ch, kernel_size, stride=stride, padding=padding,
            bias_attr=None if bias else False)
        self._batch_norm = nn.BatchNorm2D(out_ch)

    def forward(self, x):
        x = self._batch_norm(self._conv(x))
        if self.relu:
            x = F.relu(x)
        return x


class ConvBNReLU(ConvBN):
    # A class attribute, not super().forward(): dy2static (used by export)
    # cannot translate super() calls.
    relu = True
