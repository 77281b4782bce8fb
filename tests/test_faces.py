"""ffd.data.faces: the detector API, crop boxes, choosing a detector, and finding generated faces."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ffd.data.faces import AUTO_ORDER, DETECTORS, Face, FaceCropper, crop_box, make_detector
from ffd.errors import ConfigError, FfdError


def _load_bench():
    path = Path(__file__).parents[1] / "bench" / "face_detectors.py"
    spec = importlib.util.spec_from_file_location("face_detectors_bench", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


def available() -> list[str]:
    names = []
    for name in AUTO_ORDER:
        try:
            make_detector(name)
        except FfdError:
            continue
        names.append(name)
    return names


class Fixed:
    """A detector that finds what it is told to."""

    name = "fixed"

    def __init__(self, faces: list[Face]) -> None:
        self.faces = faces

    def detect(self, img: Image.Image) -> list[Face]:
        return self.faces


def test_crop_box_is_square_widened_and_clipped() -> None:
    face = Face((100.0, 100.0, 200.0, 180.0), 0.9)  # 100 wide, 80 tall: the longer side counts
    assert crop_box(face, 0.25, (1000, 1000)) == (75, 65, 225, 215)
    assert crop_box(face, 0.0, (1000, 1000)) == (100, 90, 200, 190)
    assert crop_box(Face((0.0, 10.0, 50.0, 60.0), 1.0), 0.5, (80, 70)) == (0, 0, 75, 70)  # clipped


def test_cropper_uses_the_largest_face_and_says_none() -> None:
    img = Image.new("RGB", (400, 300))
    big, small = Face((50.0, 50.0, 150.0, 150.0), 0.8), Face((300.0, 10.0, 320.0, 30.0), 1.0)
    cropper = FaceCropper(0.25, Fixed([big, small]))
    assert cropper.box(img) == crop_box(big, 0.25, img.size) == (25, 25, 175, 175)
    assert cropper(img).size == (150, 150)  # type: ignore[union-attr]
    assert FaceCropper(0.25, Fixed([])).box(img) is None and FaceCropper(0.25, Fixed([]))(img) is None


def test_make_detector_errors_name_the_choices_and_the_fix(monkeypatch) -> None:
    with pytest.raises(ConfigError, match="use one of auto, haar"):
        make_detector("retinaface")
    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)  # as if not installed
    with pytest.raises(FfdError, match="pip install .*--no-deps facenet-pytorch"):
        make_detector("mtcnn")
    assert make_detector("auto").name == "haar"  # the fallback
    assert FaceCropper(0.25, "auto").detector.name == "haar"


def test_auto_is_the_first_installed_of_the_measured_order() -> None:
    assert sorted(AUTO_ORDER) == sorted(DETECTORS[1:]) and AUTO_ORDER[-1] == "haar"
    assert make_detector("auto").name == available()[0]


@pytest.mark.parametrize("name", DETECTORS[1:])
def test_detector_finds_a_generated_face(name: str) -> None:
    try:
        detector = make_detector(name)
    except FfdError as err:
        pytest.skip(str(err))
    # Seed 3 is a scene that every detector finds (Haar finds about a third of them: the bench).
    img, truth = bench.face_scene(np.random.default_rng(3))
    faces = detector.detect(img)
    assert faces and detector.name == name
    assert all(isinstance(f, Face) and 0 < f.score <= 1 for f in faces)
    assert [f.area for f in faces] == sorted((f.area for f in faces), reverse=True)
    assert bench.iou(faces[0].box, truth) > 0.6  # the bench measures 0.75-0.8 on average
    assert detector.detect(bench.background(np.random.default_rng(1), (640, 480))) == []


@pytest.mark.parametrize("name", DETECTORS[1:])
def test_detector_finds_the_astronaut(name: str) -> None:
    data = pytest.importorskip("skimage.data")
    try:
        detector = make_detector(name)
    except FfdError as err:
        pytest.skip(str(err))
    faces = detector.detect(Image.fromarray(data.astronaut()))
    assert faces and bench.iou(faces[0].box, bench.ASTRONAUT_BOX) > 0.65  # measured 0.81 (haar), 0.86


def test_bench_prints_a_table(capsys) -> None:
    bench.main(["--n", "2", "--detectors", "haar"])
    out = capsys.readouterr().out
    assert out.startswith("| detector |") and "| haar | " in out
