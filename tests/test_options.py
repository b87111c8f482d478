"""Generation options are parsed in one place: names and aliases, conversion from JSON and from typed text, and the
ranges. The CLI flags, the chat's /set and the server's JSON all go through it."""

from __future__ import annotations

import pytest
from dgemma_runtime import DEFAULT_MAX_NEW_TOKENS, OPTION_NAMES, GenerationDefaults, GenerationOptions, OptionError

DEFAULTS = GenerationDefaults()


def test_aliases_reach_the_reference_names():
    options = GenerationOptions.from_mapping({"steps": 8, "num_predict": 300, "seed": 3})
    assert (options.max_denoising_steps, options.max_new_tokens, options.seed) == (8, 300, 3)
    assert GenerationOptions.from_mapping({"max_tokens": 64}).max_new_tokens == 64
    assert GenerationOptions.from_mapping({"max_completion_tokens": 32}).max_new_tokens == 32


@pytest.mark.parametrize(
    ("given", "expected"),
    [({"steps": "12"}, 12), ({"steps": 12.0}, 12), ({"t_max": "0.5"}, 0.5), ({"t_max": 1}, 1.0)],
)
def test_text_and_json_numbers_convert_to_the_options_type(given, expected):
    options = GenerationOptions.from_mapping(given)
    value = options.max_denoising_steps if "steps" in given else options.t_max
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"steps": 2.5}, "not a whole number"),
        ({"steps": True}, "not a whole number"),
        ({"t_max": "hot"}, "not a number"),
        ({"steps": 0}, "steps (max_denoising_steps) must be at least 1"),
        ({"t_min": 0}, "t_min must be greater than 0"),
        ({"entropy_bound": float("nan")}, "entropy_bound must be a finite number"),
        ({"seed": -1}, "seed must be at least 0"),
        ({"steps": 1025}, "steps (max_denoising_steps) must be at most 1024"),
        ({"stability_threshold": 1025}, "stability_threshold must be at most 1024"),
        ({"seed": 2**64}, "seed must be at most 18446744073709551615"),
        ({"temperature_schedule": 1}, "unknown option 'temperature_schedule'"),
    ],
)
def test_bad_values_and_names_are_one_clear_error(given, message):
    with pytest.raises(OptionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        GenerationOptions.from_mapping(given)


def test_an_unknown_name_lists_the_valid_ones():
    with pytest.raises(OptionError) as caught:
        GenerationOptions.from_mapping({"stepz": 3})
    assert all(name in str(caught.value) for name in OPTION_NAMES)


def test_a_negative_answer_length_means_the_default_and_none_keeps_the_value():
    options = GenerationOptions(max_new_tokens=64, seed=5)
    assert options.updated({"num_predict": -1}).max_new_tokens is None
    assert options.updated({"seed": None}).seed == 5
    assert options.updated({"seed": "7"}) == GenerationOptions(max_new_tokens=64, seed=7)


def test_resolving_checks_the_temperatures_against_the_models_defaults():
    with pytest.raises(OptionError, match="t_min <= t_max"):
        GenerationOptions.from_mapping({"t_min": DEFAULTS.t_max * 2}).resolve(DEFAULTS)


def test_the_largest_values_are_accepted():
    options = GenerationOptions.from_mapping({"steps": 1024, "stability_threshold": 1024, "seed": 2**64 - 1})
    assert options.resolve(DEFAULTS).max_denoising_steps == 1024


def test_a_stability_window_longer_than_the_steps_is_refused_but_the_checkpoints_shrinks():
    with pytest.raises(OptionError, match=r"stability_threshold must be at most max_denoising_steps \(4\)"):
        GenerationOptions.from_mapping({"steps": 4, "stability_threshold": 5}).resolve(DEFAULTS)
    defaults = GenerationDefaults(stability_threshold=3)
    assert GenerationOptions.from_mapping({"steps": 2}).resolve(defaults).stability_threshold == 2
    assert GenerationOptions().resolve(defaults).stability_threshold == 3


def test_the_answer_must_fit_the_context_beside_the_prompt():
    asked = GenerationOptions.from_mapping({"num_predict": 1000})
    assert asked.resolve(DEFAULTS, context=1024, prompt_tokens=24).max_new_tokens == 1000
    with pytest.raises(OptionError, match="must be at most 999 here: the model's context length is 1024 tokens"):
        asked.resolve(DEFAULTS, context=1024, prompt_tokens=25)
    # 'No limit' is the default limit, or the room the context leaves, whichever is less.
    assert GenerationOptions().resolve(DEFAULTS, context=1024, prompt_tokens=24).max_new_tokens == 1000
    assert GenerationOptions().resolve(DEFAULTS, context=10**6, prompt_tokens=24).max_new_tokens == (
        DEFAULT_MAX_NEW_TOKENS
    )
    assert GenerationOptions.from_mapping({"num_predict": 10**9}).resolve(DEFAULTS).max_new_tokens == 10**9


@pytest.mark.parametrize("prompt_tokens", [1024, 5000])
def test_a_prompt_that_leaves_no_room_names_the_context_length(prompt_tokens):
    with pytest.raises(OptionError, match=f"the prompt is {prompt_tokens} tokens: .* context length of 1024 tokens"):
        GenerationOptions().resolve(DEFAULTS, context=1024, prompt_tokens=prompt_tokens)
