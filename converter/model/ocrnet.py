"""OCRNet head (object-contextual representations) on an HRNet.

Mirrors PaddleSeg release-2.3 with backbone_indices [0], so the same feature
(720 channels for W48) feeds both the auxiliary soft-region head and the
pixel representation.
"""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from converter.family import KEY_CHANNELS, MID_CHANNELS
from converter.model.hrnet import HRNet
from converter.model.layers import ConvBNReLU

NUM_CLASSES = 19


def _cbr(in_ch, out_ch, k=1, padding="same"):
    # The head's convs keep their bias, unlike the backbone's.
    return ConvBNReLU(in_ch, out_ch, k, padding=padding, bias=True)


def gather_regions(pixels, regions):
    """Soft object regions -> region descriptors, [N, C, K, 1].

    regions are softmax-normalised over the spatial positions, then used as
    weights to pool the pixel features per class.
    """
    channels, classes = pixels.shape[1], regions.shape[1]
    pix = paddle.transpose(paddle.reshape(pixels, (0, channels, -1)), (0, 2, 1))
    reg = F.softmax(paddle.reshape(regions, (0, classes, -1)), axis=2)
    feats = paddle.transpose(paddle.bmm(reg, pix), (0, 2, 1))
    return paddle.unsqueeze(feats, axis=-1)


class ObjectAttentionBlock(nn.Layer):
    def __init__(self, in_ch, key_ch):
        super().__init__()
        self.key_ch = key_ch
        self.f_pixel = nn.Sequential(_cbr(in_ch, key_ch), _cbr(key_ch, key_ch))
        self.f_object = nn.Sequential(_cbr(in_ch, key_ch), _cbr(key_ch, key_ch))
        self.f_down = _cbr(in_ch, key_ch)
        self.f_up = _cbr(key_ch, in_ch)

    def forward(self, x, proxy):
        shape = paddle.shape(x)
        query = paddle.transpose(paddle.reshape(self.f_pixel(x), (0, self.key_ch, -1)), (0, 2, 1))
        key = paddle.reshape(self.f_object(proxy), (0, self.key_ch, -1))
        value = paddle.transpose(paddle.reshape(self.f_down(proxy), (0, self.key_ch, -1)), (0, 2, 1))
        sim = F.softmax((self.key_ch ** -0.5) * paddle.bmm(query, key), axis=-1)
        context = paddle.transpose(paddle.bmm(sim, value), (0, 2, 1))
        context = paddle.reshape(context, (0, self.key_ch, shape[2], shape[3]))
        return self.f_up(context)


class SpatialOCRModule(nn.Layer):
    def __init__(self, in_ch, key_ch, out_ch, dropout=0.1):
        super().__init__()
        self.attention_block = ObjectAttentionBlock(in_ch, key_ch)
        # The dropout only acts in training; it is kept so the layer indices
        # (conv1x1.0.*) match the checkpoint.
        self.conv1x1 = nn.Sequential(_cbr(2 * in_ch, out_ch), nn.Dropout2D(dropout))

    def forward(self, pixels, regions):
        context = self.attention_block(pixels, regions)
        return self.conv1x1(paddle.concat([context, pixels], axis=1))


class OCRHead(nn.Layer):
    def __init__(self, in_ch=720, num_classes=NUM_CLASSES,
                 mid_ch=MID_CHANNELS, key_ch=KEY_CHANNELS):
        super().__init__()
        self.spatial_ocr = SpatialOCRModule(mid_ch, key_ch, mid_ch)
        self.conv3x3_ocr = _cbr(in_ch, mid_ch, 3, padding=1)
        self.cls_head = nn.Conv2D(mid_ch, num_classes, 1)
        self.aux_head = nn.Sequential(_cbr(in_ch, in_ch), nn.Conv2D(in_ch, num_classes, 1))

    def forward(self, feat):
        soft_regions = self.aux_head(feat)
        pixels = self.conv3x3_ocr(feat)
        ocr = self.spatial_ocr(pixels, gather_regions(pixels, soft_regions))
        return [self.cls_head(ocr), soft_regions]


class OCRNet(nn.Layer):
    """In eval mode returns [main logits] resized to the input; in train mode
    also the auxiliary logits, as release-2.3 does."""

    def __init__(self, num_classes=NUM_CLASSES, backbone="hrnet_w48"):
        super().__init__()
        self.backbone = HRNet(backbone)
        self.head = OCRHead(self.backbone.feat_channels[0], num_classes)

    def forward(self, x):
        logits = self.head(self.backbone(x)[0])
        if not self.training:
            logits = logits[:1]
        size = paddle.shape(x)[2:]
        return [F.interpolate(t, size, mode="bilinear", align_corners=False) for t in logits]


class InferenceWrapper(nn.Layer):
    """What export.py of release-2.3 saves: the first logit map, then argmax over
    classes as int32 unless without_argmax."""

    def __init__(self, net, without_argmax=False):
        super().__init__()
        self.net = net
        self.without_argmax = without_argmax

    def forward(self, x):
        out = self.net(x)[0]
        if self.without_argmax:
            return out
        return paddle.argmax(out, axis=1, dtype="int32")
