"""Bad inputs for the query service, by class: mutated images, bombs, nonsense vectors, hostile strings, raw wire.

Shared by `cbmir bench fuzz` and tests/reliability (test_fuzz.py, test_bombs.py): one place that knows how to
write a PNG declaring 13000x13000 or a deflated DICOM holding a gibibyte of zeros. Every generator is a pure
function of a numpy Generator, so a run is reproducible from its seed.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np

DIM = 1280  # efficientnet_lite0, the collection the bench builds
HUGE = 100_000  # characters of a hostile id / collection name / filter key
INJECTIONS = ('" or 1==1 or label == "', "x' or '1'='1", 'label != ""', '\\" or true', "a\x00b", "😀" * 70,
              "); drop collection reliability; --", "${jndi:ldap://x}", "\n", "%s%s%s", "A" * 5000, "",
              "label in [\"malignant\"] or id != \"\"", "../../../../etc/passwd", "{{7*7}}", "' OR ''='")
FILTER_KEYS = ("label", "modality", "body_part", "view", "dataset", "predicted_label", "model_id", "source", "id",
               "embedding", "patient_name", "", "label; drop", "__proto__")
# pydicom's own test files: uncompressed, big endian, deflated, RLE, JPEG baseline / extended / lossless,
# JPEG-LS, JPEG 2000, multi-frame, truncated.
DICOM_TEST_FILES = ("CT_small.dcm", "MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm",
                    "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "JPEG2000.dcm",
                    "SC_rgb_jpeg_dcmtk.dcm", "JPGExtended.dcm", "JPEG-lossy.dcm", "image_dfl.dcm",
                    "SC_rgb_rle_2frame.dcm", "MR_truncated.dcm", "liver_1frame.dcm", "JPEGLSNearLossless_16.dcm")


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(width: int, height: int) -> bytes:
    """A valid grey 8-bit PNG of width x height zeros: a few hundred KB declaring width*height pixels."""
    deflate = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    idat = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def png_declaring(width: int, height: int) -> bytes:
    """A valid-looking PNG whose IHDR declares huge dimensions over 1 KB of data (a bomb's first bytes)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
            + _chunk(b"IEND", b""))


def deflated_dicom_bomb(zeros: int) -> bytes:
    """A real small CT in the Deflated transfer syntax (written by pydicom), plus a private element of `zeros`
    zero bytes appended to its data set before deflating."""
    import pydicom

    ds = pydicom.dcmread(dicom_test_file("CT_small.dcm"))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    written = io.BytesIO()
    ds.save_as(written, enforce_file_format=True)
    data = written.getvalue()
    meta_end = 132 + 12 + struct.unpack_from("<I", data, 132 + 8)[0]
    dataset = zlib.decompress(data[meta_end:], -zlib.MAX_WBITS)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    # (7FE1,0010) LO private creator, then (7FE1,1001) OB of `zeros` bytes: after every standard element.
    creator = b"CBMIR BOMB"
    parts = [deflate.compress(dataset)]
    if zeros:
        parts += [deflate.compress(struct.pack("<HH2sH", 0x7FE1, 0x0010, b"LO", len(creator)) + creator),
                  deflate.compress(struct.pack("<HH2sHI", 0x7FE1, 0x1001, b"OB", 0, zeros))]
        block = b"\x00" * (16 * 1024 * 1024)
        parts += [deflate.compress(block) for _ in range(zeros // len(block))]
    parts.append(deflate.flush())
    return data[:meta_end] + b"".join(parts)


def dicom_test_file(name: str) -> Path:
    """A file shipped inside pydicom's package (no download)."""
    import pydicom

    return Path(pydicom.__file__).parent / "data" / "test_files" / name


def encode(pixels: np.ndarray, kind: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=kind)
    return buffer.getvalue()


@cache
def image_seeds() -> dict[str, tuple[bytes, ...]]:
    """Real files to mutate, per format: PNG (grey, RGB, 16-bit, a huge-header one), JPEG, DICOM (every syntax)."""
    rng = np.random.default_rng(0)
    grey = (rng.random((64, 64)) * 255).astype(np.uint8)
    colour = (rng.random((32, 48, 3)) * 255).astype(np.uint8)
    grey16 = (rng.random((40, 40)) * 65535).astype(np.uint16)
    dicoms = tuple(dicom_test_file(n).read_bytes() for n in DICOM_TEST_FILES if dicom_test_file(n).exists())
    return {"png": (encode(grey, "PNG"), encode(colour, "PNG"), encode(grey16, "PNG"), png_declaring(100_000, 100_000)),
            "jpeg": (encode(grey, "JPEG"), encode(colour, "JPEG")),
            "dicom": dicoms}


@cache
def dicom_header_edits() -> tuple[bytes, ...]:
    """Real DICOMs with lying headers: Rows/Columns 65535, a million frames, 64 or 7 bits, 4 samples, no pixels."""
    import pydicom

    edits = [{"Rows": 65535, "Columns": 65535}, {"Rows": 0, "Columns": 0}, {"NumberOfFrames": 1_000_000},
             {"BitsAllocated": 64}, {"BitsAllocated": 7, "BitsStored": 7}, {"SamplesPerPixel": 4},
             {"PhotometricInterpretation": "NOPE"}, {"Rows": 65535}, {"HighBit": 40}, {"PixelRepresentation": 7},
             {"PlanarConfiguration": 5}, {"WindowWidth": 0, "WindowCenter": 1e30}]
    out = []
    for name in ("CT_small.dcm", "MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm", "MR_small_jp2klossless.dcm"):
        if not dicom_test_file(name).exists():
            continue
        for edit in edits:
            ds = pydicom.dcmread(dicom_test_file(name))
            for keyword, value in edit.items():
                setattr(ds, keyword, value)
            written = io.BytesIO()
            ds.save_as(written)
            out.append(written.getvalue())
        ds = pydicom.dcmread(dicom_test_file(name))
        del ds.PixelData
        written = io.BytesIO()
        ds.save_as(written)
        out.append(written.getvalue())
    return tuple(out)


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """Bit flips, truncation, inserted junk, and overwritten 32-bit fields (little and big endian)."""
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 7))):
        position = int(rng.integers(0, max(1, len(out))))
        op = rng.choice(["flip", "flip", "truncate", "insert", "int32le", "int32be"])
        if op == "flip" and out:
            out[position] ^= 1 << int(rng.integers(0, 8))
        elif op == "truncate":
            del out[position:]
        elif op == "insert":
            out[position:position] = rng.bytes(int(rng.integers(1, 65)))
        elif op.startswith("int32"):
            value = int(rng.choice([0, 1, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 65535 * 65535 % 2**32]))
            out[position:position + 4] = struct.pack("<I" if op == "int32le" else ">I", value)
    return bytes(out)


def varint(value: int) -> bytes:
    """A protobuf base-128 varint; negative numbers as their 64-bit two's complement (how -1 travels)."""
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def raw_field(number: int, payload: bytes | int) -> bytes:
    """One protobuf field on the wire: a varint (int) or length-delimited (bytes)."""
    if isinstance(payload, int):
        return varint(number << 3) + varint(payload)
    return varint(number << 3 | 2) + varint(len(payload)) + payload


# A request: the gRPC method and the exact bytes sent (identity serializer), so anything a wire can carry is fair.
Request = tuple[str, bytes]
SEARCH = "/cbmir.v1.RetrievalService/Search"
DESCRIBE = "/cbmir.v1.RetrievalService/DescribeCollection"
HEALTH = "/grpc.health.v1.Health/Check"


def _search(**fields) -> bytes:
    from cbmir.services.query.proto import retrieval_pb2

    request = retrieval_pb2.SearchRequest(top_k=fields.pop("top_k", 5), **fields)
    return request.SerializeToString()


def _text(rng: np.random.Generator) -> str:
    if rng.random() < 0.5:
        return str(rng.choice(INJECTIONS))
    return "".join(chr(int(c)) for c in rng.integers(32, 0x3000, int(rng.integers(0, 40)))
                   if not 0xD800 <= c <= 0xDFFF)


def _vector(values: np.ndarray) -> bytes:
    from cbmir.services.query.proto import retrieval_pb2

    return _search(vector=retrieval_pb2.FloatVector(values=values.astype(np.float32).tolist()))


def largest_allowed_images(side: int) -> tuple[bytes, ...]:
    """Images at the server's per-image pixel limit (side², 8192² by default) that are not bombs: real BreastMNIST
    pixels tiled with a gradient, as an RGB PNG (3 bytes a pixel decoded) and a 16-bit grey PNG (2 bytes)."""
    import io

    from PIL import Image

    from cbmir.ingestion.samples import BREASTMNIST_SUBSET

    tile = np.load(BREASTMNIST_SUBSET)["train_images"][0].astype(np.float32)
    reps = -(-side // tile.shape[0])
    texture = np.tile(tile, (reps, reps))[:side, :side]
    ramp = np.linspace(0, 64, side, dtype=np.float32)
    grey = np.clip(texture * 0.75 + ramp[None, :], 0, 255)
    encoded = []
    for image in (Image.fromarray(np.stack([grey, grey[::-1], grey[:, ::-1]], -1).astype(np.uint8)),
                  Image.fromarray((grey * 257).astype(np.uint16))):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=1)
        encoded.append(buffer.getvalue())
    return tuple(encoded)


class Classes:
    """The request classes: name → generator(rng) → Request. Bombs and real images are built once per run.

    OPT_IN classes run only when asked for by name (`--classes`): they cost seconds of decode per request.
    """

    OPT_IN = ("largest_image",)

    def __init__(self, collection: str, valid_images: list[bytes], oversized_mib: int, bombs: bool = True,
                 opt_in: tuple[str, ...] = (), max_side: int = 8192) -> None:
        self.collection = collection
        self.largest = largest_allowed_images(max_side) if "largest_image" in opt_in else ()
        self.valid_images = valid_images
        self.oversized = b"\x00" * ((oversized_mib << 20) + 1024)
        self.bombs = ((png_bomb(13000, 13000), deflated_dicom_bomb(1 << 30), png_declaring(13000, 13000),
                       png_declaring(2**31 - 1, 1)) if bombs else ())
        seeds = image_seeds()
        self.seeds = seeds
        self.header_edits = dicom_header_edits()
        self.generators: dict[str, Callable[[np.random.Generator], Request]] = {
            "valid_image": self.valid_image, "protobuf_random": self.protobuf_random,
            "protobuf_other_methods": self.protobuf_other_methods, "image_random": self.image_random,
            "png_mutated": lambda r: self._mutated("png", r), "jpeg_mutated": lambda r: self._mutated("jpeg", r),
            "dicom_mutated": lambda r: self._mutated("dicom", r), "dicom_header": self.dicom_header,
            "bombs": self.bomb, "vectors": self.vectors, "top_k": self.top_k, "filters": self.filters,
            "huge_strings": self.huge_strings, "enums": self.enums, "unknown_fields": self.unknown_fields,
            "oversized": self.oversized_message,
        }
        if self.largest:
            self.generators["largest_image"] = self.largest_image
        if not bombs:
            del self.generators["bombs"]

    # Share of the requests per class; the expensive ones (bombs, oversized) kept few but never zero.
    WEIGHTS = {"valid_image": 3, "protobuf_random": 8, "protobuf_other_methods": 4, "image_random": 8,
               "png_mutated": 10, "jpeg_mutated": 8, "dicom_mutated": 12, "dicom_header": 6, "bombs": 1.5,
               "vectors": 8, "top_k": 6, "filters": 8, "huge_strings": 6, "enums": 5, "unknown_fields": 4,
               "oversized": 0.5, "largest_image": 1}

    def valid_image(self, rng: np.random.Generator) -> Request:
        return SEARCH, _search(image=self.valid_images[int(rng.integers(len(self.valid_images)))])

    def protobuf_random(self, rng: np.random.Generator) -> Request:
        return SEARCH, rng.bytes(int(rng.integers(1, 2048)))

    def protobuf_other_methods(self, rng: np.random.Generator) -> Request:
        return (DESCRIBE, HEALTH)[int(rng.integers(2))], rng.bytes(int(rng.integers(1, 512)))

    def image_random(self, rng: np.random.Generator) -> Request:
        return SEARCH, _search(image=rng.bytes(int(rng.integers(0, 16384))))

    def _mutated(self, kind: str, rng: np.random.Generator) -> Request:
        seeds = self.seeds[kind]
        return SEARCH, _search(image=mutate(seeds[int(rng.integers(len(seeds)))], rng))

    def dicom_header(self, rng: np.random.Generator) -> Request:
        data = self.header_edits[int(rng.integers(len(self.header_edits)))]
        return SEARCH, _search(image=data if rng.random() < 0.5 else mutate(data, rng))

    def bomb(self, rng: np.random.Generator) -> Request:
        return SEARCH, _search(image=self.bombs[int(rng.integers(len(self.bombs)))])

    def vectors(self, rng: np.random.Generator) -> Request:
        choice = int(rng.integers(9))
        base = rng.standard_normal(DIM).astype(np.float32)
        if choice == 0:
            base[int(rng.integers(DIM))] = np.nan
        elif choice == 1:
            base[int(rng.integers(DIM))] = rng.choice([np.inf, -np.inf])
        elif choice == 2:
            base[:] = 0
        elif choice == 3:
            base[:] = 1e19  # finite, but its norm overflows float32
        elif choice == 4:
            base[:] = 3.4e38
        elif choice == 5:
            base = base[:int(rng.choice([0, 1, DIM - 1, 512, 1024]))]
        elif choice == 6:
            base = np.resize(base, int(rng.choice([DIM + 1, 2 * DIM, 100_000])))
        elif choice == 7:
            base[:] = 1e-45  # subnormal: norm underflows
        return SEARCH, _vector(base)  # choice 8: a plausible vector (OK)

    def top_k(self, rng: np.random.Generator) -> Request:
        value = int(rng.choice([0, -1, 10**9, 2**32 - 1, 1001, 1, 1000, -(2**31)]))
        query = raw_field(3, b"no-such-id") if rng.random() < 0.5 else raw_field(1, self.valid_images[0])
        return SEARCH, query + raw_field(4, value) + raw_field(9, int(rng.integers(2)))

    def filters(self, rng: np.random.Generator) -> Request:
        filters = {str(rng.choice(FILTER_KEYS)) if rng.random() < 0.7 else _text(rng): _text(rng)
                   for _ in range(int(rng.integers(1, 5)))}
        query = {"id": _text(rng)} if rng.random() < 0.3 else {"image": self.valid_images[0]}
        return SEARCH, _search(filters=filters, rerank=_text(rng) if rng.random() < 0.2 else "", **query)

    def huge_strings(self, rng: np.random.Generator) -> Request:
        huge = str(rng.choice(["x", "/", "é", "\x00", "label"])) * HUGE
        where = int(rng.integers(7))
        if where == 6:
            return DESCRIBE, raw_field(1, huge.encode())
        fields = [{"id": huge}, {"collection": huge, "id": "x"}, {"filters": {huge: "x"}, "id": "x"},
                  {"filters": {"label": huge}, "id": "x"}, {"prefilter_class": huge, "prefilter": 3, "id": "x"},
                  {"rerank": huge, "id": "x"}][where]
        return SEARCH, _search(**fields)

    def enums(self, rng: np.random.Generator) -> Request:
        value = int(rng.choice([4, 99, -1, 2**31 - 1, -(2**31), 3, 2]))
        return SEARCH, raw_field(1, self.valid_images[0]) + raw_field(4, 3) + raw_field(7, value)

    def unknown_fields(self, rng: np.random.Generator) -> Request:
        _, wire = self.valid_image(rng) if rng.random() < 0.5 else self.filters(rng)
        for _ in range(int(rng.integers(1, 4))):
            number = int(rng.integers(13, 5000))
            wire += raw_field(number, rng.bytes(int(rng.integers(0, 64)))) if rng.random() < 0.5 else \
                raw_field(number, int(rng.integers(0, 2**62)))
        return SEARCH, wire

    def largest_image(self, rng: np.random.Generator) -> Request:
        return SEARCH, _search(image=self.largest[int(rng.integers(len(self.largest)))])

    def oversized_message(self, rng: np.random.Generator) -> Request:
        return SEARCH, raw_field(1, self.oversized) + raw_field(4, 3)
