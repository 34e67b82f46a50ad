"""The trainer's dropout masks: the kept fraction is 1 - p, and each adapter's own generator decides."""

from __future__ import annotations

import pytest
import torch

from loraplex.worker.trainer.multi_lora import dropout_keep


@pytest.mark.parametrize("p", [0.0, 0.05, 0.5, 0.9])
def test_keeps_each_element_with_probability_one_minus_p(p: float) -> None:
    generator = torch.Generator().manual_seed(7)
    keep = dropout_keep(torch.Size((64, 33, 97)), p, generator, torch.device("cpu"))
    assert keep.shape == (64, 33, 97)
    assert keep.dtype == torch.bool
    # 204,864 draws: the standard error of the kept fraction is below 0.0011.
    assert abs(keep.float().mean().item() - (1 - p)) < 0.006
    # Not one bias per position: every row keeps about the same share.
    rows = keep.flatten(1).float().mean(dim=1)
    assert rows.min().item() > (1 - p) - 0.05


def test_the_same_generator_state_gives_the_same_mask_and_the_next_draw_differs() -> None:
    def draw(generator: torch.Generator) -> torch.Tensor:
        return dropout_keep(torch.Size((8, 16, 32)), 0.3, generator, torch.device("cpu"))

    first, again = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    mask = draw(first)
    assert torch.equal(mask, draw(again))
    assert not torch.equal(mask, draw(first))
