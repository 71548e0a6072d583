"""ImageNet classification with the shared MobileNets (preimage.models.classify) and `preimage classify`.
Everything but the preprocessing needs the shared data (models, labels, images) and skips
without it."""

import json

import pytest
import torch

from preimage.models.classify import preprocess_for_classification
from preimage.cli import main

MODELS = ("mobilenet_v2", "mobilenet_v2_tf2", "mobilenet_v1", "mobilenet_v1_small")


@pytest.fixture(scope="module")
def eval3(shared):
    from preimage import data
    paths = data.eval_images()[:3]
    assert paths[0].name == "n01440764_tench.JPEG"
    return paths


def test_preprocessing_resizes_the_short_side_and_crops_the_centre():
    img = torch.zeros(3, 300, 400)
    img[:, :, 200:] = 255.0                      # right half white
    y = preprocess_for_classification(img, 224)
    assert y.shape == (3, 224, 224) and 0 <= y.min() and y.max() <= 255
    # short side → 256, long side → 341; the crop keeps the central 224 columns of 341
    assert y[:, :, :100].max() < 1 and y[:, :, -100:].min() > 254
    batch = preprocess_for_classification(torch.rand(2, 3, 500, 200) * 255, (128, 128))
    assert batch.shape == (2, 3, 128, 128)
    with pytest.raises(ValueError, match="RGB"):
        preprocess_for_classification(torch.zeros(1, 10, 10), 224)


def test_labels_and_synsets(shared):
    from preimage.models.classify import imagenet_labels, imagenet_synsets, synset_class_index
    labels = imagenet_labels()
    assert len(labels) == 1001 and labels[0] == "background" and labels[1].startswith("tench")
    assert len(imagenet_synsets()) == 1000 and imagenet_synsets()[0] == "n01440764"
    assert synset_class_index("somewhere/n01440764_tench.JPEG") == 1
    assert synset_class_index("n01530575_brambling.JPEG") == 11 and labels[11].startswith("brambling")
    assert synset_class_index("holiday.jpg") is None


def test_classify_files_top5(eval3):
    from preimage.models.classify import classify_files, format_predictions, synset_class_index
    results = classify_files(eval3, "mobilenet_v2")
    assert len(results) == 3
    for path, r in zip(eval3, results):
        assert r["path"] == str(path) and r["model"] == "mobilenet_v2"
        preds = r["predictions"]
        assert len(preds) == 5
        probs = [p["probability"] for p in preds]
        assert all(0.0 <= q <= 1.0 for q in probs)
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-5
        assert len({p["index"] for p in preds}) == 5
        assert r["true_index"] == synset_class_index(path) and r["true_label"] is not None
        # the true class of these three is in the top 5
        assert r["true_index"] in [p["index"] for p in preds], (path.name, preds)
    tench = results[0]
    assert tench["true_label"] == "tench, Tinca tinca"
    assert "tench, Tinca tinca" in [p["label"] for p in tench["predictions"]]
    text = format_predictions(results)
    for r in results:
        assert r["path"] in text
        for p in r["predictions"]:
            assert p["label"] in text
    assert "true: tench, Tinca tinca [1]" in text and "[1] *" in text
    assert len(text.splitlines()) == 3 * 6


def test_classify_tensors_and_topk(shared):
    from preimage.models.classify import classify
    from preimage.models.mobilenet import load_mobilenet
    net = load_mobilenet("mobilenet_v1_small")
    x = torch.rand(2, 3, 128, 128) * 255
    out = classify(x, net, topk=3, preprocessed=True)
    assert len(out) == 2 and all(len(o) == 3 for o in out)
    idx, label, prob = out[0][0]
    assert isinstance(idx, int) and isinstance(label, str) and 0 <= prob <= 1
    with torch.no_grad():
        p = net(x)
    assert idx == int(p[0].argmax()) and prob == pytest.approx(float(p[0].max()))
    # any size is resized and cropped unless told the images are preprocessed already
    assert len(classify([torch.rand(3, 90, 150) * 255], net, topk=1)) == 1
    with pytest.raises(ValueError, match="preprocessed images must be"):
        classify(torch.rand(1, 3, 100, 100) * 255, net, preprocessed=True)


def test_cli_json(eval3, capsys):
    assert main(["classify", str(eval3[0]), str(eval3[1]), "--model", "mobilenet_v1_small", "--json",
                 "--topk", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in out] == [str(eval3[0]), str(eval3[1])]
    assert all(r["model"] == "mobilenet_v1_small" and len(r["predictions"]) == 3 for r in out)
    assert out[0]["predictions"][0]["label"] == "tench, Tinca tinca"


def test_cli_text(eval3, capsys):
    assert main(["classify", str(eval3[0]), "--model", "mobilenet_v1_small"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(str(eval3[0])) and "tench, Tinca tinca" in out and "(mobilenet_v1_small)" in out


def test_cli_errors(shared, tmp_path, capsys):
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"this is not an image")
    assert main(["classify", str(junk), "--model", "mobilenet_v1_small"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("preimage: error:") and "cannot read" in err and "junk.jpg" in err
    assert "Traceback" not in err
    assert main(["classify", str(tmp_path / "missing.jpg"), "--model", "mobilenet_v1_small"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["classify", str(junk), "--model", "resnet9"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'resnet9'" in err and all(m in err for m in MODELS) and "Traceback" not in err
