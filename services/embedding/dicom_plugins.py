"""Which pydicom pixel decoders may run in a cbmir process, in what order: GDCM only where nothing else can decode
a syntax, and pyjpegls before pylibjpeg for JPEG-LS.

GDCM's JPEG codecs throw C++ exceptions nobody catches on some corrupt or inconsistent JPEG streams (a flipped
byte in a baseline JPEG DICOM, a JPEG DICOM declaring 64 bits allocated), and the process aborts: one request
killed `cbmir serve` in `cbmir bench fuzz`. pydicom tries its plugins in order, GDCM first, and an exception in
one makes it try the next, so GDCM is removed from every syntax another installed plugin (Pillow, pylibjpeg,
pyjpegls) decodes. Syntaxes only GDCM decodes here keep it (say so in the docs).

pydicom's order for JPEG-LS puts pylibjpeg (libjpeg) before pyjpegls (CharLS); CharLS decodes the clinical-size
JPEG-LS of `cbmir bench corpus` 1.6x faster with the same pixels (lossless), so it goes first and libjpeg stays
as the fallback.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)

GDCM = "gdcm"
PYLIBJPEG = "pylibjpeg"
PYJPEGLS = "pyjpegls"
_PYLIBJPEG_DECODER = ("pydicom.pixels.decoders.pylibjpeg", "_decode_frame")
_lock = threading.Lock()  # the first decodes of a server arrive together: one of them removes, once
_only_gdcm: tuple[str, ...] | None = None


def drop_gdcm_where_replaceable() -> tuple[str, ...]:
    """Remove GDCM from each pydicom decoder that has another available plugin; -> the syntaxes still on GDCM."""
    global _only_gdcm
    if _only_gdcm is None:
        with _lock:
            if _only_gdcm is None:
                _only_gdcm = _drop()
    return _only_gdcm


def _drop() -> tuple[str, ...]:
    from pydicom.pixels import get_decoder
    from pydicom.uid import (
        JPEG2000,
        JPEG2000Lossless,
        JPEGBaseline8Bit,
        JPEGExtended12Bit,
        JPEGLossless,
        JPEGLosslessSV1,
        JPEGLSLossless,
        JPEGLSNearLossless,
    )

    for uid in (JPEGLSLossless, JPEGLSNearLossless):
        _prefer_pyjpegls(get_decoder(uid))
    only_gdcm = []
    for uid in (JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless,
                JPEGLSNearLossless, JPEG2000Lossless, JPEG2000):
        decoder = get_decoder(uid)
        plugins = list(decoder.available_plugins)
        if GDCM not in plugins:
            continue
        if len(plugins) > 1:
            decoder.remove_plugin(GDCM)
        else:
            only_gdcm.append(uid.name)
    if only_gdcm:
        log.info("only GDCM decodes %s here (install cbmir[gpl-jpeg] / pyjpegls for another decoder)",
                 ", ".join(only_gdcm))
    return tuple(only_gdcm)


def _prefer_pyjpegls(decoder: object) -> None:
    """Move pylibjpeg after pyjpegls in a JPEG-LS decoder's plugin order (pydicom tries them in insertion order)."""
    plugins = decoder.available_plugins  # type: ignore[attr-defined]
    if PYJPEGLS in plugins and PYLIBJPEG in plugins:
        decoder.remove_plugin(PYLIBJPEG)  # type: ignore[attr-defined]
        decoder.add_plugin(PYLIBJPEG, _PYLIBJPEG_DECODER)  # type: ignore[attr-defined]


def plugin_order(uid: object) -> tuple[str, ...]:
    """The plugins pydicom tries for a transfer syntax, first first."""
    from pydicom.pixels import get_decoder

    return tuple(get_decoder(uid)._validate_plugins())  # noqa: SLF001 - pydicom exposes the order only here
