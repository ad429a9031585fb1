import torch

from talbench.data.dataset import VideoItem
from talbench.inference import fuse_external_scores, inference_model, video_candidates, windows
from talbench.models import build_model, pad_batch
from talbench.config import DEFAULTS, finalize
import copy


def test_windows_cover_the_video_with_overlap():
    assert windows(100, 0, 0.25) == [0]
    assert windows(100, 128, 0.25) == [0]
    starts = windows(1000, 256, 0.25)
    assert starts[0] == 0 and starts[-1] == 1000 - 256
    assert all(b - a == 192 for a, b in zip(starts, starts[1:-1]))
    assert all(b - a <= 192 for a, b in zip(starts, starts[1:]))


def _tiny_model():
    config = copy.deepcopy(DEFAULTS)
    config["dataset"].update(input_dim=8, num_classes=3, max_seq_len=256)
    config["model"].update(embd_dim=16, fpn_dim=16, head_dim=16, n_mha_win_size=5)
    config = finalize(config)
    torch.manual_seed(0)
    return build_model(config["model"]).eval(), config["test_cfg"]


def test_chunked_inference_covers_long_videos_in_windows():
    model, test_cfg = _tiny_model()
    feats = torch.randn(8, 1000)
    item = VideoItem("v", feats, torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), 30.0, 100.0, 4.0, 16.0)
    whole = video_candidates(model, item, torch.device("cpu"), {**test_cfg, "chunk_size": 0})
    chunked = video_candidates(model, item, torch.device("cpu"), {**test_cfg, "chunk_size": 256, "chunk_overlap": 0.25})
    assert chunked[0].shape[1] == 2 and len(chunked[0]) == len(chunked[1]) == len(chunked[2])
    # windows are shifted back to video coordinates: candidates reach the end of the video
    assert chunked[0][:, 0].max() > 1000 - 256 and whole[0][:, 0].max() > 1000 - 256
    assert chunked[0].min() > -50 and chunked[0].max() < 1050


def test_the_inference_model_and_layout_change_no_candidate():
    """inference_model (weights stored once in the kernels' dtype and layout) and channels-last batches
    give the candidates of the plain model, to the rounding of the precision (the kernels may sum in
    another order)."""
    model, test_cfg = _tiny_model()
    feats = torch.randn(8, 300).T.contiguous().T  # [C, T], stored [T, C] like the dataset's items
    item = VideoItem("v", feats, torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), 30.0, 100.0, 4.0, 16.0)
    cpu = torch.device("cpu")
    for precision in ("fp32", "bf16"):
        cfg = {**test_cfg, "precision": precision}
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"), torch.no_grad():
            plain = model(*pad_batch([feats.contiguous()], model.max_div_factor))[0]
        prepared = video_candidates(inference_model(copy.deepcopy(model), cfg, cpu), item, cpu, cfg)
        assert len(prepared[1]) == len(plain["scores"]) > 0
        if precision == "bf16":  # near-equal scores may swap places
            torch.testing.assert_close(prepared[1].sort().values, plain["scores"].sort().values, rtol=2e-2, atol=1e-4)
        else:
            assert torch.equal(prepared[2], plain["labels"])
            torch.testing.assert_close(prepared[1], plain["scores"])
            torch.testing.assert_close(prepared[0], plain["segments"])
    batch, _ = pad_batch([feats], 32, channels_last=True)
    assert batch.shape == (1, 8, 320) and batch.transpose(1, 2).is_contiguous()
    assert torch.equal(batch[0, :, :300], feats) and not batch[0, :, 300:].any()


def test_score_fusion_takes_the_top_classes():
    result = {"segments": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "scores": torch.tensor([0.64, 0.25]), "labels": torch.zeros(2, dtype=torch.long)}
    fused = fuse_external_scores(result, [0.01, 0.81, 0.09, 0.09], topk=2)
    assert fused["labels"].tolist() == [1, 1, 2, 2]
    torch.testing.assert_close(fused["scores"], torch.tensor([0.72, 0.45, 0.24, 0.15], dtype=torch.float64))
    assert fused["segments"].tolist() == [[1.0, 2.0], [3.0, 4.0], [1.0, 2.0], [3.0, 4.0]]
