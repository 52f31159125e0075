"""Relax rewrites for AMX's tiles (schedules/amx.py): a tile's pixels are one row of output, up to
16, so a convolution over rows narrower than that (a 224x224 model's last stage, 7x7) fills few
of a tile's rows. Flattened, its rows take whole tiles.

The padded input is read as one long row of pixels, its rows ``Wp`` pixels apart, and the
convolution computes every position of it: output pixel ``(y, x)`` is position ``y * Wp + x``,
which reads input position ``y * Wp + x + ry * Wp + rx`` for kernel offset ``(ry, rx)``. The kernel
rows become input channels: the flat input shifted by ``ry * Wp`` for each ``ry``, concatenated,
with a ``1 x kw`` kernel over them. The positions of the padding columns (``x >= W``) compute what
is sliced off.
"""

from __future__ import annotations

from .cpu_rewrites import from_constants, rewrite_calls

ROWS = 16  # of an AMX tile
MAX_COVERED = 0.75  # flattened only where it takes at most this share of the tiles of rows
CHANNELS_LAST = ("NHWC", "HWIO", "NHWC")  # after cpu_rewrites.channels_last


def _flattened(call, bindings, dtypes: tuple[str, ...]):
    from tvm import relax

    attrs = call.attrs
    data, weight = call.args
    if str(data.ty.dtype) not in dtypes or int(attrs.groups) != 1 \
            or (attrs.data_layout, attrs.kernel_layout, attrs.out_layout) != CHANNELS_LAST \
            or any(int(s) != 1 for s in (*attrs.strides, *attrs.dilation)) \
            or not from_constants(weight, bindings):
        return None
    try:
        batch, height_in, width_in, channels = (int(d) for d in data.ty.shape)
        _, height, width, outputs = (int(d) for d in call.ty.shape)
        kh, kw = int(weight.ty.shape[0]), int(weight.ty.shape[1])
    except TypeError:  # a symbolic shape
        return None
    if kh == 1 or width >= ROWS:
        return None
    top, left, bottom, right = (int(p) for p in attrs.padding)
    row = width_in + left + right  # Wp: the padded input's row of pixels
    positions = -(-height * row // ROWS) * ROWS  # whole tiles
    if positions // ROWS > MAX_COVERED * height * -(-width // ROWS):
        return None
    reach = (kh - 1) * row + positions + kw - 1  # flat pixels the last tile reads
    rows = -(-reach // row)
    padded = relax.op.nn.pad(data, [0, 0, top, rows - height_in - top, left, right, 0, 0])
    flat = relax.op.reshape(padded, (batch, 1, rows * row, channels))
    shifted = [relax.op.strided_slice(flat, axes=[2], begin=[ry * row],
                                      end=[ry * row + positions + kw - 1]) for ry in range(kh)]
    # HWIO (kh, kw, C, O) -> (1, kw, kh * C, O): a kernel row's channels after the one before
    kernel_rows = relax.op.reshape(relax.op.permute_dims(weight, [1, 0, 2, 3]),
                                   (1, kw, kh * channels, outputs))
    out = relax.op.nn.conv2d(relax.op.concat(shifted, axis=3), kernel_rows, strides=[1, 1],
                             padding=[0, 0, 0, 0], data_layout="NHWC", kernel_layout="HWIO",
                             out_layout="NHWC", out_dtype=str(call.ty.dtype))
    out = relax.op.strided_slice(out, axes=[2], begin=[0], end=[height * row])
    out = relax.op.reshape(out, (batch, height, row, outputs))
    return relax.op.strided_slice(out, axes=[2], begin=[0], end=[width])


def flattened_rows(mod, dtypes: tuple[str, ...]):
    """``mod`` with each convolution of input type among ``dtypes`` (AMX's: uint8, bfloat16),
    stride 1, over rows narrower than a tile, flattened (see the module's docstring)."""
    return rewrite_calls(mod, {
        "relax.nn.conv2d": lambda call, bindings: _flattened(call, bindings, dtypes)})
