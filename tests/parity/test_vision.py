"""Images end to end against transformers 5.23, on tiny random checkpoints with a vision tower and Gemma 4's
processor files: the prepared prompt equals the processor's output, the soft tokens the reference tower's, the
decoder logits after an image prompt the reference's (image blocks attend both ways), and generated ids are
identical under the same seed."""

from __future__ import annotations

from pathlib import Path

import dgemma_runtime
import pytest
import torch
from dgemma_runtime import ImageError, inspect
from dgemma_runtime.cache import KVCache
from dgemma_runtime.vision import VISION_PREFIXES
from transformers import DynamicCache

from tests.support.checkpoints import (
    TOKENIZER,
    load_reference,
    load_reference_processor,
    vision_spec,
    write_vision_checkpoint,
)
from tests.test_images import noise

TOLERANCE = 1e-5
PICTURES = {
    "odd.png": ("RGB", (37, 23)),
    "large.png": ("RGB", (1500, 900)),  # far over the tiny patch budget: resized down
    "gray.png": ("L", (64, 200)),
    "rgba.png": ("RGBA", (90, 91)),
}


def max_relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).abs().max() / reference.abs().max()).item()


def user(text: str, *images: str | Path) -> dict:
    return {"role": "user", "content": text, "images": list(images)}


CONVERSATIONS = {
    "odd size": [user("Describe this picture.", "odd.png")],
    "large image, resized": [user("What is in it?", "large.png")],
    "grayscale and RGBA in one turn": [
        {"role": "system", "content": "Be brief."},
        user("Compare them.", "gray.png", "rgba.png"),
    ],
    "image in the second turn": [
        user("Hello."),
        {"role": "assistant", "content": "Hi! How can I help?"},
        user("And this one?", "odd.png"),
    ],
    "no image": [user("Just text.")],
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_vision_checkpoint(tmp_path_factory.mktemp("vision"))


@pytest.fixture(scope="module")
def engine(folder):
    return dgemma_runtime.load(folder, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def processor(folder):
    return load_reference_processor(folder)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("pictures")
    for i, (name, (mode, size)) in enumerate(PICTURES.items()):
        noise(mode, size, seed=20 + i).save(where / name)
    return where


def ours(conversation: list[dict], pictures: Path) -> list[dict]:
    return [m | {"images": [pictures / name for name in m.get("images", [])]} for m in conversation]


def transformers_form(conversation: list[dict], pictures: Path) -> list[dict]:
    """The same conversation as transformers takes it: a content list (images, then text) where there are images."""
    out = []
    for m in conversation:
        content = m["content"]
        if m.get("images"):
            images = [{"type": "image", "path": str(pictures / name)} for name in m["images"]]
            content = [*images, {"type": "text", "text": content}]
        out.append({"role": m["role"], "content": content})
    return out


def processed(processor, conversation: list[dict], pictures: Path):
    return processor.apply_chat_template(
        transformers_form(conversation, pictures),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )


@pytest.mark.parametrize("case", CONVERSATIONS)
def test_prepared_prompt_equals_the_processor(engine, processor, pictures, case):
    prompt = engine.prepare(ours(CONVERSATIONS[case], pictures))
    expected = processed(processor, CONVERSATIONS[case], pictures)
    assert prompt.ids == expected["input_ids"][0].tolist()
    if "pixel_values" not in expected:
        assert prompt.pixel_values is None and prompt.image_position_ids is None
        return
    assert torch.equal(prompt.pixel_values, expected["pixel_values"])
    assert torch.equal(prompt.image_position_ids, expected["image_position_ids"])


@pytest.mark.parametrize("clipped", [False, True], ids=["plain", "clipped-linears"])
def test_soft_tokens_equal_the_reference_tower(tmp_path, pictures, clipped):
    folder = write_vision_checkpoint(tmp_path / "ckpt", vision_spec(use_clipped_linears=clipped))
    engine = dgemma_runtime.load(folder, device="cpu", dtype="float32")
    prompt = engine.prepare(ours([user("Three.", "odd.png", "gray.png", "large.png")], pictures))
    with torch.no_grad():
        expected = load_reference(folder).model.encoder.get_image_features(
            prompt.pixel_values, prompt.image_position_ids
        )
        soft = engine.model.embed_images(prompt.pixel_values, prompt.image_position_ids)
    assert soft.shape == expected.pooler_output.shape
    assert max_relative_error(soft, expected.pooler_output) <= TOLERANCE


def test_bfloat16_soft_tokens_stay_close(folder, engine, pictures):
    """bf16 is not bit-exact with the reference, but must stay close to the float32 result."""
    prompt = engine.prepare(ours([user("Two.", "odd.png", "rgba.png")], pictures))
    half = dgemma_runtime.load(folder, device="cpu", dtype="bfloat16")
    with torch.no_grad():
        exact = engine.model.embed_images(prompt.pixel_values, prompt.image_position_ids)
        close = half.model.embed_images(prompt.pixel_values, prompt.image_position_ids)
    assert close.dtype == torch.bfloat16
    assert max_relative_error(close.float(), exact) < 0.05


def reference_logits(model, inputs, canvas: torch.Tensor, blocks: bool = True) -> torch.Tensor:
    """Encode the prompt with its images as `generate` does (its mask mapping, so image blocks attend both ways;
    without `blocks`, plain causal), then one decoder pass over `canvas`."""
    ids = inputs["input_ids"]
    P, encoder = ids.shape[1], model.model.encoder
    cache = DynamicCache(config=model.config.get_text_config(decoder=True))
    positions = torch.arange(P)[None]
    masks = encoder.create_masks_for_generate(
        config=model.config,
        inputs_embeds=torch.empty(1, P, 0),
        attention_mask=torch.ones(1, P, dtype=torch.bool),
        past_key_values=cache,
        position_ids=positions,
        mm_token_type_ids=inputs["mm_token_type_ids"] if blocks else None,
    )
    encoder(
        input_ids=ids,
        pixel_values=inputs["pixel_values"],
        image_position_ids=inputs["image_position_ids"],
        attention_mask=masks,
        past_key_values=cache,
        position_ids=positions,
    )
    canvas_positions = torch.arange(P, P + canvas.shape[1])[None]
    return model(decoder_input_ids=canvas, past_key_values=cache, decoder_position_ids=canvas_positions).logits


def test_decoder_logits_after_an_image_prompt(folder, engine, processor, pictures):
    """Image runs far longer than the sliding window (8): only a both-ways block mask gets these logits right."""
    conversation = CONVERSATIONS["grayscale and RGBA in one turn"]
    inputs = processed(processor, conversation, pictures)
    prompt = engine.prepare(ours(conversation, pictures))
    canvas = torch.randint(0, engine.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(3))
    reference = load_reference(folder)
    with torch.no_grad():
        expected = reference_logits(reference, inputs, canvas)
        causal = reference_logits(reference, inputs, canvas, blocks=False)
        cache = KVCache(engine.config, 1, len(prompt.ids), engine.device, engine.dtype)
        soft = engine.model.embed_images(prompt.pixel_values, prompt.image_position_ids)
        engine.model.encode(torch.tensor([prompt.ids]), cache, soft)
        logits = engine.model.decode(canvas, cache, None)
    assert max_relative_error(logits, expected) <= TOLERANCE
    assert max_relative_error(causal, expected) > 1e-3  # the block mask matters here


@pytest.mark.parametrize("case", ["grayscale and RGBA in one turn", "image in the second turn"])
def test_generated_ids_equal_the_reference(folder, engine, processor, pictures, case):
    inputs = processed(processor, CONVERSATIONS[case], pictures)
    reference = load_reference(folder)
    torch.manual_seed(5)
    sequences = reference.generate(**inputs, max_new_tokens=32).sequences[0, inputs["input_ids"].shape[1] :].tolist()
    eos = set(reference.generation_config.eos_token_id)
    expected = sequences[: next((i + 1 for i, t in enumerate(sequences) if t in eos), len(sequences))]
    result = engine.generate(engine.prepare(ours(CONVERSATIONS[case], pictures)), seed=5, max_new_tokens=32)
    assert result.token_ids == expected


def test_a_follow_up_turn_with_an_image_continues_the_session(engine, pictures):
    """`prepare_follow_up` gives the tail a whole-conversation `prepare` would, and a session encodes its image."""
    first = engine.prepare([user("Hello.")])
    session = engine.new_session(1024)
    answer = engine.generate(first, session=session, seed=1, max_new_tokens=16)
    follow = engine.prepare_follow_up("And this one?", [pictures / "odd.png"], closed=session.closed)
    said = {"role": "model", "content": engine.tokenizer.decode(answer.token_ids)}
    whole = engine.prepare([user("Hello."), said, user("And this one?", pictures / "odd.png")])
    assert whole.ids[-len(follow.ids) :] == follow.ids and torch.equal(whole.pixel_values, follow.pixel_values)
    pending = len(session.pending)  # the answer, encoded ahead of the new turn
    again = engine.generate(follow, session=session, seed=2, max_new_tokens=16)
    assert again.token_ids and again.stats.prompt_tokens == pending + len(follow.ids)


def test_a_text_only_model_refuses_images_in_one_line(tmp_path, engine, pictures):
    tiny = dgemma_runtime.load(TOKENIZER.parent, device="cpu", dtype="float32")  # dgemma-tiny: no vision tower
    assert tiny.model.vision is None
    for attempt in (
        lambda: tiny.prepare([user("Describe.", pictures / "odd.png")]),
        lambda: tiny.generate(engine.prepare([user("Describe.", pictures / "odd.png")]), max_new_tokens=8),
    ):
        with pytest.raises(ImageError, match="reads text only") as caught:
            attempt()
        assert "\n" not in str(caught.value)


def test_the_vision_tower_counts_in_memory_and_parameters(folder, engine):
    info = inspect(folder)
    vision = {n: t for n, t in info.tensors.items() if n.startswith(VISION_PREFIXES)}
    assert vision and set(vision) <= set(info.plan.expected)
    assert sum(info.stored.values()) == sum(info.tensors[n].nbytes for n in info.plan.expected)
    parameters = list(engine.model.parameters())
    assert sum(info.loaded(torch.float32).values()) == sum(p.numel() * p.element_size() for p in parameters)
    assert info.parameters[0] == sum(p.numel() for p in parameters)
    tower = sum(p.numel() for p in engine.model.vision.parameters())
    assert tower == sum(t.nbytes // 4 for t in vision.values())  # float32 checkpoint
