"""The packed serving file: int4 and pruned versions serve a file about graph.pb's size that restores the exact
flatbuffer at load; dense int8 versions keep model.tflite; a damaged pack is refused with a one-line error."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from lifecycle import artifacts, litepack
from lifecycle.errors import ModelError
from lifecycle.manifest import Manifest


@pytest.mark.parametrize("case", ["int4", "sparse", "sparse-int4", "raw", "odd"])
def test_byte_codec_round_trips_and_picks_the_smallest(case: str) -> None:
    rng = np.random.default_rng(3)
    n = 4099 if case == "odd" else 4096
    if case == "int4":
        values = rng.integers(-8, 8, n)
    elif case == "sparse":
        values = rng.integers(-127, 128, n) * (rng.random(n) < 0.3)
    elif case in ("sparse-int4", "odd"):
        values = rng.integers(-7, 8, n) * (rng.random(n) < 0.4)
    else:
        values = rng.integers(-127, 128, n) | 1  # dense full-range int8: nothing is smaller
    data = values.astype(np.int8).tobytes()
    encoded = litepack._encode(data)
    if case == "raw":
        assert encoded is None
        return
    encoding, payload = encoded
    assert encoding == ("sparse-int4" if case == "odd" else case)
    assert len(payload) < len(data)
    assert litepack._decode(encoding, payload, len(data)) == data


def test_float16_encoding_is_lossless_and_only_for_float32_that_float16_holds() -> None:
    rng = np.random.default_rng(4)
    halves = (rng.normal(size=1024) * 0.01).astype(np.float16).astype(np.float32)
    halves[:3] = np.array([0.0, -0.0, 6.0e-8], np.float16)  # signed zeros and a subnormal come back bit for bit
    data = halves.astype("<f4").tobytes()
    encoding, payload = litepack._encode(data)
    assert encoding == "float16" and len(payload) == len(data) // 2
    assert litepack._decode(encoding, payload, len(data)) == data
    # One value float16 cannot hold (or a NaN) and float16 is not used: the codec never rounds (the byte codec's
    # ``sparse`` still takes the floats' zero bytes out, losslessly).
    for bad in (np.float32(0.1), np.float32(np.nan), np.float32(1e6)):
        edited = halves.copy()
        edited[7] = bad
        wide = edited.astype("<f4").tobytes()
        encoding, payload = litepack._encode(wide)
        assert encoding != "float16" and litepack._decode(encoding, payload, len(wide)) == wide
    # A format-1 pack never uses it.
    assert litepack._encode(data, ("int4", "sparse", "sparse-int4", "int3", "sparse-int3"))[0] == "sparse"
    with pytest.raises(ValueError, match="float16"):
        litepack._decode("float16", payload[:-2], len(data))


@pytest.fixture(scope="module")
def versions(frozen: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from lifecycle.workflows import run_compress

    root = tmp_path_factory.mktemp("litepack")
    source = str(frozen["outcome"].version)
    return {recipe: artifacts.load_version(run_compress(source, recipe, root / recipe.replace(":", "-").replace(
        ",", "+"), track=False).version) for recipe in ("int8", "prune:0.6,int8", "prune:0.6,int4")}


def test_dense_int8_keeps_a_plain_flatbuffer(versions: dict) -> None:
    version = versions["int8"]
    assert version.manifest.serving.file == "model.tflite" and version.manifest.serving.pack is None
    assert not (version.path / litepack.PACK_FILE).exists()


@pytest.mark.parametrize("recipe", ["prune:0.6,int8", "prune:0.6,int4"])
def test_pruned_and_int4_versions_serve_a_pack_that_restores_the_flatbuffer(versions: dict, recipe: str) -> None:
    from lifecycle.inference import Predictor
    from lifecycle.litert import LiteRunner

    version = versions[recipe]
    serving = version.manifest.serving
    path = version.path / serving.file
    assert serving.file == litepack.PACK_FILE and not (version.path / "model.tflite").exists()
    assert serving.bytes == path.stat().st_size == version.manifest.files[litepack.PACK_FILE].bytes
    flatbuffer = litepack.read(path)
    assert len(flatbuffer) == serving.pack["flatbuffer_bytes"]
    # Measured on the tests' 32-d MR model, against the int8 version's flatbuffer (the dense form both expand to):
    # prune:0.6,int8 0.59x, prune:0.6,int4 0.42x (the per-row float32 scales of a 32-d embedding do not shrink).
    dense = versions["int8"].manifest.serving.bytes
    assert serving.bytes < (0.65 if recipe.endswith("int8") else 0.47) * dense
    assert sum(serving.pack["expanded_at_load"].values()) > 0.9 * serving.bytes
    # Served through the pack, the predictions are the flatbuffer's own, bit for bit.
    ids = np.random.default_rng(0).integers(0, version.manifest.architecture.vocab_size, (8, version.max_len))
    direct = LiteRunner(flatbuffer, version.max_len, version.manifest.input.dtype).run(ids)
    predictor = Predictor(version, runtime="litert")
    np.testing.assert_array_equal(predictor._run(ids), direct)
    assert serving.test_accuracy is not None


def test_a_damaged_pack_is_refused_naming_the_file(versions: dict, tmp_path: Path) -> None:
    from lifecycle.inference import Predictor

    copy = tmp_path / "v"
    shutil.copytree(versions["prune:0.6,int4"].path, copy)
    path = copy / litepack.PACK_FILE
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="model.tflite.pack: not a readable serving pack") as caught:
        litepack.read(path)
    assert "\n" not in str(caught.value)
    path.write_bytes(bytes(data[:len(data) // 2]))
    with pytest.raises(ModelError, match="not a readable serving pack"):
        litepack.read(path)
    # Through a version: the file-list check sees the edit first, with its own one-line error.
    with pytest.raises(ModelError, match="model.tflite.pack"):
        Predictor(artifacts.load_version(copy), runtime="litert")


def test_manifest_refuses_two_serving_files(versions: dict, tmp_path: Path) -> None:
    copy = tmp_path / "v"
    shutil.copytree(versions["prune:0.6,int4"].path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"]["model.tflite"] = manifest["files"][litepack.PACK_FILE]
    with pytest.raises(ModelError, match="serving must describe the one serving file"):
        Manifest.from_dict(manifest, copy / "manifest.json")


def test_int4_pack_stores_its_float16_scales_at_two_bytes_in_format_2(versions: dict) -> None:
    version = versions["prune:0.6,int4"]
    flatbuffer = litepack.read(version.path / litepack.PACK_FILE)
    packed = litepack.pack(flatbuffer)
    assert packed.format == 2 and version.manifest.serving.pack["format"] == 2
    halves = [hole for hole in packed.holes if hole.encoding == "float16"]
    # The embedding's per-row scales (the only float32 buffer of 1 KB or more): float16 values widened for LiteRT.
    rows = version.manifest.tensors["weights/embedding"].shape[0]
    assert [hole.length for hole in halves] == [4 * rows]
    # Format 1 could only take the zero bytes out of those floats (its ``sparse``): measured 15,070 bytes for
    # 4,462 rows, against float16's 8,924.
    older = litepack.pack(flatbuffer, max_format=1)
    assert older.format == 1 and len(older.content) > len(packed.content) + rows


def test_format_1_packs_still_load_and_newer_formats_ask_for_an_upgrade(versions: dict, tmp_path: Path) -> None:
    flatbuffer = litepack.read(versions["prune:0.6,int4"].path / litepack.PACK_FILE)
    older = litepack.pack(flatbuffer, max_format=1)
    assert litepack.unpack(older.content) == flatbuffer
    # A pack without float16 buffers is written as format 1, which every earlier lifecycle reads.
    assert litepack.pack(litepack.read(versions["prune:0.6,int8"].path / litepack.PACK_FILE)).format == 1

    def with_header(content: bytes, edit: dict) -> bytes:
        start = len(litepack.MAGIC) + 4
        (length,) = struct.unpack_from("<I", content, len(litepack.MAGIC))
        header = {**json.loads(content[start:start + length]), **edit}
        text = json.dumps(header, separators=(",", ":")).encode()
        return litepack.MAGIC + struct.pack("<I", len(text)) + text + content[start + length:]

    newer = litepack.pack(flatbuffer)
    path = tmp_path / litepack.PACK_FILE
    path.write_bytes(with_header(newer.content, {"format": 3}))
    with pytest.raises(ModelError, match="serving pack format 3; this lifecycle reads formats 1 to 2. Upgrade "
                                         "lifecycle") as caught:
        litepack.read(path)
    assert "\n" not in str(caught.value)
    # A float16 buffer in a pack that says format 1 is damage, not an old pack.
    path.write_bytes(with_header(newer.content, {"format": 1}))
    with pytest.raises(ModelError, match="not a readable serving pack .encoding 'float16' in a format-1 pack") as bad:
        litepack.read(path)
    assert "\n" not in str(bad.value)
