import pytest
import torch

from app.lm.model import CharRNN, ModelConfig


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("encoding", ["one_hot", "embedding"])
def test_forward_shapes_and_state_carry(cell, encoding):
    cfg = ModelConfig(vocab_size=11, cell=cell, hidden_size=8, num_layers=2, encoding=encoding)
    model = CharRNN(cfg).eval()
    ids = torch.randint(0, 11, (3, 7))
    logits, state = model(ids)
    assert logits.shape == (3, 7, 11)
    assert state.shape == (cfg.state_rows, 3, 8)
    # feeding the sequence in two parts with the carried state gives the same logits
    first, s = model(ids[:, :4])
    second, s = model(ids[:, 4:], s)
    torch.testing.assert_close(torch.cat([first, second], dim=1), logits)
    last, _ = model(ids, last_only=True)
    torch.testing.assert_close(last[:, 0], logits[:, -1])


def test_one_hot_input_matches_the_tutorial_encoding():
    cfg = ModelConfig(vocab_size=5, encoding="one_hot")
    model = CharRNN(cfg)
    ids = torch.tensor([[0, 3, 4]])
    assert torch.equal(model.encode(ids), torch.nn.functional.one_hot(ids, 5).float())


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="cell"):
        ModelConfig(vocab_size=5, cell="transformer")
    with pytest.raises(ValueError, match="encoding"):
        ModelConfig(vocab_size=5, encoding="bytes")
