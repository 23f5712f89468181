"""Start-up checks of the scorer: each fast path (the output-head shortcut, prefix trees, oneDNN
kernels) must reproduce the model's own numbers on a probe input, or the scorer uses the plain path."""

from __future__ import annotations

import torch

from dso_cli.errors import DsoError
from dso_cli.scoring.render import EncodedItem


def _resolve_tree_tokens(value: int | str, device: torch.device) -> int:
    """``auto``: 512 nodes per tree on CPU (attention over a longer tree costs more than the sharing
    saves), 4096 on accelerators, where wider matrix products pay and attention is cheap."""
    if value == "auto":
        return 512 if device.type == "cpu" else 4096
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise DsoError(f"scoring.tree_tokens={value!r}: must be a positive integer or 'auto'")
    return value


def _resolve_attention_chunk(value: int | str, device: torch.device) -> int:
    """``auto``: query chunks of 128 tree nodes on CPU, 1024 on accelerators; 0 turns chunking off
    (dense attention under the tree mask)."""
    if value == "auto":
        return 128 if device.type == "cpu" else 1024
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise DsoError(f"scoring.tree_attention_chunk={value!r}: must be a non-negative integer or 'auto'")
    return value


class StartupChecks:
    """Checks run once at construction, each a method of :class:`dso_cli.scoring.OptionScorer`."""

    def _probe_items(self) -> list[EncodedItem]:
        """Two short items that share a prefix, one with a two-token option: the start-up checks' input."""
        vocab = self.head.weight.shape[0]
        prompt = tuple((5 * i + 3) % vocab for i in range(7))
        return [
            EncodedItem(prompt, ((11 % vocab,), (13 % vocab, 17 % vocab))),
            EncodedItem((*prompt[:4], 19 % vocab), ((11 % vocab,), (23 % vocab,))),
        ]

    def _kernel_matches_stock(self, kernel: str) -> bool:
        """Do scores through linear ``kernel`` equal the stock kernel's on the probe (to 1e-4)?"""
        probe = self._probe_items()
        try:
            with torch.no_grad():
                stock = self._score(probe, False, None)
                self.linear_kernel = kernel
                with self.kernels():
                    ours = self._score(probe, False, None)
        except RuntimeError:
            return False
        finally:
            self.linear_kernel = "stock"
        return bool(torch.isfinite(ours).all() and (ours - stock).abs().max() <= 1e-4)

    def _tree_matches_rows(self) -> bool:
        """Does the tree path reproduce per-item rows on two items that share a prefix? Attention
        implementations that ignore custom masks (e.g. flash-attention) fail this and use rows. The
        chunked tree attention is checked the same way (in chunks of 3 nodes) and turned off if it fails."""
        probe = self._probe_items()
        with torch.no_grad():
            rows = self._score_packed(probe, 2)
        tolerance = 1e-4 if self.head.weight.dtype == torch.float32 else 0.1

        def tree_matches(chunk: int) -> bool:
            saved, self.attention_chunk = self.attention_chunk, chunk
            try:
                with torch.no_grad():
                    tree = self._score_tree(probe, 2, None)
            except Exception:  # any failure of the custom mask or the chunking means: do not use it
                return False
            finally:
                self.attention_chunk = saved
            return bool(torch.isfinite(tree).all() and (tree - rows).abs().max() <= tolerance)

        if not tree_matches(0):
            return False
        if self.attention_chunk and not tree_matches(3):
            self.attention_chunk = 0
        return True

    def _shortcut_matches_model(self) -> bool:
        """Does backbone + head reproduce ``model(...).logits`` on a short input?"""
        if not isinstance(self.head, torch.nn.Linear):
            return False
        vocab = self.head.weight.shape[0]
        ids = [[(7 * i + 3) % vocab for i in range(6)]]
        self.full_forward = False
        try:
            with torch.no_grad():
                hidden, _ = self._forward(ids)
                ours = self._log_softmax(hidden[:, -1])
                theirs = torch.log_softmax(
                    self.model(input_ids=torch.tensor(ids, device=self.device)).logits[:, -1].float(), -1
                )
        except (AttributeError, TypeError, ValueError, RuntimeError):
            return False
        tolerance = 1e-3 if self.head.weight.dtype == torch.float32 else 0.25
        return bool((ours.to(theirs.device) - theirs).abs().max() <= tolerance)
