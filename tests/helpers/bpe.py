"""A tiny byte-level BPE tokenizer trained with the tokenizers package, for the export tests."""

#: A few KB of code and prose with non-ASCII letters, digits and contractions.
CORPUS = [
    *(f"def g{i}(y):\n    return y + {i * 37}\n" for i in range(60)),
    *(f"class Point{i}:\n\tdef __init__(self, x, y):\n\t\tself.x, self.y = x, y\n"
      for i in range(20)),
    "It's the model's turn; we'll see what they've done, I'm sure you'd agree.",
    "Déjà vu: naïve café, Größe, ñandú, Ærøskøbing, İstanbul, façade.",
    "Числа 12345 и 67890; 東京 2024年; مرحبا 3.14159",
    "emoji 🙂🚀 ✓ — “quotes” and ‘single’ … 100%",
] * 3


def train_bpe(lines, vocab_size: int = 320, special=("<|endoftext|>",)):
    """A byte-level BPE (GPT-2's pre-tokenizer, no prefix space) trained on ``lines``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(lines, trainer)
    return tok
