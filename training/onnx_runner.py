"""Run an exported MESS early-exit cascade (ONNX graphs) on a batch of images.

Written next to the graphs as ``run_cascade.py`` by `dse export --format onnx`. Needs numpy and
either onnxruntime or the onnx package (its pure-python reference evaluator: slow, but exact
and always available); nothing of mess-dse, no torch.

    python run_cascade.py FOLDER IMAGES.npy OUT.npy   # IMAGES: float32 [N, 3, H, W], normalised
                                                      # prints one exit id per image

From Python: ``Cascade(folder)(images) -> (logits [N, C, H, W], exit_ids: list of N str)``.

How it works: cascade.json lists the exits in order. For each early exit j the runner runs
stage_j (backbone segments up to the exit) on the images still running, head_j (native logits)
and decision_j (c_img per image, the share of pixels whose confidence is >= th_pix). The images
whose c_img >= th_img (compared in float32, like the network) leave: upsample_j gives their
logits at input size. The others continue, regrouped into a smaller batch, from the same
feature; the last exit answers every image still running. Per image the logits and exits equal
those of running the images one at a time. With one image no output buffer is made: the
answering exit's upsampled logits are the output. LR-ASPP networks also pass `skip` (an
earlier feature their final head reads) from stage to stage.
"""

import json
import sys
from pathlib import Path

import numpy as np


def default_session(path):
    """``run(feeds) -> outputs`` for one graph: onnxruntime on the CPU when installed, else
    onnx's reference evaluator."""
    try:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        # A cascade is several sessions: a spinning pool of the session that just ran would
        # busy-wait on the cores the next one needs (mess-dse profiles with spinning off too).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = onnxruntime.InferenceSession(str(path), options,
                                            providers=["CPUExecutionProvider"])
        return lambda feeds: sess.run(None, feeds)
    except ImportError:
        from onnx.reference import ReferenceEvaluator

        ref = ReferenceEvaluator(str(path))
        return lambda feeds: ref.run(None, feeds)


class Cascade:
    """The exported cascade in ``folder``; ``make_session(path)`` builds each graph's runner
    (default: `default_session`; pass one to choose threads, providers, optimisation)."""

    def __init__(self, folder, make_session=None):
        self.folder = Path(folder)
        self.manifest = json.loads((self.folder / "cascade.json").read_text())
        make = make_session or default_session
        self.graphs = {name: make(self.folder / name) for name in self.manifest["graphs"]}
        self.exit_ids = list(self.manifest["exit_ids"])
        self.th_img = np.float32(self.manifest["th_img"])

    def __call__(self, images):
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[0] < 1:
            raise ValueError(f"images must be [N, 3, H, W] with N >= 1, got {images.shape}")
        if images.shape[0] == 1:
            return self._single(images)
        return self._batch(images)

    def _run(self, graph, feeds):
        """Run one graph on the inputs it takes (cascade.json lists them per graph)."""
        names = self.manifest.get("inputs", {}).get(graph)
        return self.graphs[graph](feeds if names is None else {k: feeds[k] for k in names})

    def _stage(self, j, feature, skip):
        feature_out, skip_out = self._run(f"stage_{j}.onnx", {"feature": feature, "skip": skip})
        return feature_out, skip_out

    def _last(self, j, feature, skip):
        logits = self._run(f"head_{j}.onnx", {"feature": feature, "skip": skip})[0]
        return self.graphs[f"upsample_{j}.onnx"]({"logits": logits})[0]

    def _early(self, j, feature):
        logits = self.graphs[f"head_{j}.onnx"]({"feature": feature})[0]
        c_img = self.graphs[f"decision_{j}.onnx"]({"logits": logits})[0]
        return logits, np.asarray(c_img, dtype=np.float32) >= self.th_img

    def _single(self, image):
        """One image, the deployed case: what the latency model adds up, nothing more."""
        feature = skip = image
        last = len(self.exit_ids) - 1
        for j, exit_id in enumerate(self.exit_ids[:-1]):
            feature, skip = self._stage(j, feature, skip)
            logits, leave = self._early(j, feature)
            if bool(leave[0]):
                return self.graphs[f"upsample_{j}.onnx"]({"logits": logits})[0], [exit_id]
        feature, skip = self._stage(last, feature, skip)
        return self._last(last, feature, skip), [self.exit_ids[last]]

    def _batch(self, images):
        n = images.shape[0]
        out = None
        taken = [self.exit_ids[-1]] * n
        running = np.arange(n)
        feature = skip = images
        last = len(self.exit_ids) - 1
        for j, exit_id in enumerate(self.exit_ids[:-1]):
            feature, skip = self._stage(j, feature, skip)
            logits, leave = self._early(j, feature)
            if leave.any():
                up = self.graphs[f"upsample_{j}.onnx"]({"logits": logits[leave]})[0]
                if out is None:
                    out = np.zeros((n, *up.shape[1:]), dtype=up.dtype)
                out[running[leave]] = up
                for r in running[leave]:
                    taken[int(r)] = exit_id
                stay = ~leave
                # skip is the images until a stage computes the skip feature: same rows either way
                running, feature, skip = running[stay], feature[stay], skip[stay]
                if running.size == 0:
                    return out, taken
        feature, skip = self._stage(last, feature, skip)
        up = self._last(last, feature, skip)
        if out is None:
            return up, taken
        out[running] = up
        return out, taken


def main(argv):
    if len(argv) != 3:
        print("usage: python run_cascade.py FOLDER IMAGES.npy OUT.npy", file=sys.stderr)
        return 2
    images = np.load(argv[1])
    if images.ndim == 3:  # one image without its batch axis
        images = images[None]
    logits, exit_ids = Cascade(argv[0])(images)
    np.save(argv[2], logits)
    print("\n".join(exit_ids))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
