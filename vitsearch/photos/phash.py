"""A perceptual hash: what tells a copy of a picture from another shot of the same thing.

A CLS embedding says *what* is in a photo, so two dogs of one breed can score like a photo and its
copy. The hash keeps the coarse layout of light and dark instead: the signs of the 63 lowest
2-D DCT frequencies of a 32x32 greyscale thumbnail (the DC term is left out: it is brightness).
Resizing, recompressing, re-exporting, greyscale or sepia toning and light crops barely move
those signs; a different photo flips about half of them.

Signs rather than the usual "above the median" bits make the hash follow the photo when it is
turned or mirrored: mirroring the image negates the DCT terms of odd horizontal frequency, a
vertical flip those of odd vertical frequency and a transpose swaps the two frequencies. So the
hash of a photo turned by 90 degrees with its EXIF orientation lost is one of 8 bit-permutations
(:func:`orientations`) of the original's hash, and comparing two photos takes the smallest Hamming
distance over those 8: one stored 64-bit integer per photo covers all of them.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

SIDE = 32  # thumbnail side
LOW = 8  # the LOW x LOW lowest frequencies make the hash
BITS = LOW * LOW
_U, _V = np.divmod(np.arange(BITS), LOW)  # bit i holds frequency (vertical _U[i], horizontal _V[i])


def _dct_matrix(n: int, keep: int) -> np.ndarray:
    """The first ``keep`` rows of the orthonormal DCT-II matrix of size ``n``."""
    k = np.arange(keep)[:, None]
    x = np.arange(n)[None, :]
    basis = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    basis[0] /= np.sqrt(2.0)
    return basis


_DCT = _dct_matrix(SIDE, LOW)


def _mask(selected: np.ndarray) -> int:
    return int(sum(1 << int(i) for i in np.flatnonzero(selected)))


_ODD_H = _mask(_V % 2 == 1)  # bits a left-right mirror flips
_ODD_V = _mask(_U % 2 == 1)  # bits an upside-down flip flips
_TRANSPOSED = _V * LOW + _U  # bit i of a transposed image comes from bit _TRANSPOSED[i]


def thumbnail(image: Image.Image) -> np.ndarray:
    """The 32x32 greyscale thumbnail the hash is computed from (float, 0..255)."""
    grey = image.convert("L")
    # reducing_gap: a cheap integer shrink first, then an area average; the decoded photo
    # is already in memory, so this costs well under a millisecond.
    small = grey.resize((SIDE, SIDE), Image.Resampling.BOX, reducing_gap=2.0)
    return np.asarray(small, dtype=np.float64)


def photo_hash(image: Image.Image) -> int:
    """The 64-bit perceptual hash of ``image`` (bit 0, the DC term, is always 0)."""
    low = _DCT @ thumbnail(image) @ _DCT.T
    bits = low.ravel() > 0
    bits[0] = False
    return _mask(bits)


def orientations(value: int) -> tuple[int, ...]:
    """The hash of the photo in each of its 8 orientations (turned by 90 degrees, mirrored)."""
    transposed = _permute(value, _TRANSPOSED)
    return tuple(
        base ^ flips
        for base in (value, transposed)
        for flips in (0, _ODD_H, _ODD_V, _ODD_H ^ _ODD_V)
    )


def distance(a: int, b: int) -> int:
    """Bits apart in the orientation of ``b`` closest to ``a`` (0 .. 63)."""
    return min((a ^ other).bit_count() for other in orientations(b))


def distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """:func:`distance` of each pair ``(a[i], b[i])`` of unsigned 64-bit hashes."""
    a = np.asarray(a, dtype=np.uint64)
    best = np.full(len(a), BITS, dtype=np.int64)
    for other in orientations_array(np.asarray(b, dtype=np.uint64)):
        best = np.minimum(best, _popcount(a ^ other))
    return best


def orientations_array(values: np.ndarray) -> list[np.ndarray]:
    """:func:`orientations` of many hashes at once: 8 arrays."""
    values = np.asarray(values, dtype=np.uint64)
    transposed = np.zeros_like(values)
    for target, source in enumerate(_TRANSPOSED.tolist()):
        transposed |= ((values >> np.uint64(source)) & np.uint64(1)) << np.uint64(target)
    flips = [np.uint64(f) for f in (0, _ODD_H, _ODD_V, _ODD_H ^ _ODD_V)]
    return [base ^ f for base in (values, transposed) for f in flips]


def _permute(value: int, source_of: np.ndarray) -> int:
    return sum(((value >> int(source)) & 1) << target for target, source in enumerate(source_of))


def _popcount(values: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(values).astype(np.int64)
    as_bytes = values.view(np.uint8).reshape(len(values), 8)
    return np.unpackbits(as_bytes, axis=1).sum(axis=1).astype(np.int64)
