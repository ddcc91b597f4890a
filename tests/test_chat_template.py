"""Chat templates (runtime/decoder/chat.py, Model.chat) against transformers' own ``apply_chat_template``.

* Rendering is byte-identical to ``tokenizer.apply_chat_template(messages, tokenize=False, ...)`` for the real
  SmolLM2-135M-Instruct and Qwen2.5-Coder-0.5B-Instruct templates (read from their GGUFs with gguf-py, the
  tokenizer given the same template and special tokens) and for synthetic templates exercising tojson,
  loop controls, namespace/dict, strftime_now, {% generation %}, continue_final_message and reasoning fields.
* Errors: raise_exception / jinja errors / syntax errors give a one-line ChatTemplateError carrying the template's
  message; a bundle without a template says how to pass one.
* Export: an HF checkpoint's tokenizer_config.json / chat_template.jinja and a GGUF's tokenizer.chat_template end up
  in the bundle (chat_template.jinja + the manifest's tokenizer section), and Model.chat generates from exactly the
  ids transformers' apply_chat_template(tokenize=True) gives.
"""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from edgespool.errors import ChatTemplateError, OptionError  # noqa: E402
from edgespool.runtime.decoder import chat as chat_mod  # noqa: E402
from edgespool.runtime.decoder.chat import ChatTemplate  # noqa: E402
from serving_common import fetched  # noqa: E402 (the real GGUFs, skipped offline outside CI)

SYSTEM = {"role": "system", "content": "You are terse."}
CONVERSATIONS = {
    "user": [{"role": "user", "content": "Hello!"}],
    "system_user": [SYSTEM, {"role": "user", "content": "What is 2+2?"}],
    "multi_turn": [SYSTEM, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello. Ask."},
                   {"role": "user", "content": "  Why is the sky blue?\n"}],
    "ends_with_assistant": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}],
    "unicode": [{"role": "system", "content": "Réponds en français — «court»."},
                {"role": "user", "content": "naïve café, 日本語, emoji 🤖👍🏽, tab\tand\nnewline, <b>&amp;</b>"}],
}


def hf_tokenizer(template: str, special: dict[str, str]):
    """A transformers tokenizer that holds only a chat template and special tokens (rendering reads nothing
    else)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, chat_template=template, **special)


def check_same(template: str, special: dict[str, str], messages, **kw) -> str:
    ref = hf_tokenizer(template, special).apply_chat_template(messages, tokenize=False, **kw)
    ours = ChatTemplate(template, special).render(messages, kw.pop("add_generation_prompt", False), **kw)
    assert ours == ref
    return ours


def gguf_template(path: Path) -> tuple[str, dict[str, str]]:
    """tokenizer.chat_template and the bos/eos texts (via the token ids) of a GGUF, read with gguf-py."""
    from gguf import GGUFReader

    r = GGUFReader(path)
    tokens = r.fields["tokenizer.ggml.tokens"]

    def text(i: int) -> str:
        return bytes(tokens.parts[tokens.data[i]]).decode("utf-8")

    special = {name: text(r.fields[f"tokenizer.ggml.{key}"].contents())
               for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"))
               if f"tokenizer.ggml.{key}" in r.fields}
    return r.fields["tokenizer.chat_template"].contents(), special


@pytest.fixture(scope="module")
def smollm2():
    return gguf_template(fetched("smollm2-135m"))


@pytest.fixture(scope="module")
def qwen():
    return gguf_template(fetched("qwen2.5-coder-0.5b"))


# -- real templates ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gen", [True, False])
@pytest.mark.parametrize("conv", sorted(CONVERSATIONS))
def test_smollm2_template_matches_transformers(smollm2, conv, gen):
    template, special = smollm2
    out = check_same(template, special, CONVERSATIONS[conv], add_generation_prompt=gen)
    assert out.endswith("<|im_start|>assistant\n") == gen


def test_smollm2_special_tokens_from_gguf_source(smollm2):
    from edgespool.exporters.gguf_source import open_gguf_model

    g = open_gguf_model(fetched("smollm2-135m"))
    assert g.meta("tokenizer.chat_template") == smollm2[0]
    assert {k: g._special_tokens()[k] for k in ("bos_token", "eos_token")} == smollm2[1]


QWEN_TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city — «today»",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "Città"}},
                   "required": ["city"]}}}]
QWEN_TOOL_CHAT = [
    {"role": "user", "content": "Weather in Zürich?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich", "unit": "°C"}}}]},
    {"role": "tool", "content": "{\"temp\": 3}"},
    {"role": "tool", "content": "second result"},
    {"role": "assistant", "content": "It is 3 °C."},
    {"role": "user", "content": "Thanks"},
]


@pytest.mark.slow
@pytest.mark.parametrize("gen", [True, False])
@pytest.mark.parametrize("conv", sorted(CONVERSATIONS))
def test_qwen25_coder_template_matches_transformers(qwen, conv, gen):
    template, special = qwen
    check_same(template, special, CONVERSATIONS[conv], add_generation_prompt=gen)


@pytest.mark.slow
def test_qwen25_coder_template_tools_match_transformers(qwen):
    template, special = qwen
    out = check_same(template, special, QWEN_TOOL_CHAT, add_generation_prompt=True, tools=QWEN_TOOLS)
    assert '"arguments": {"city": "Zürich", "unit": "°C"}' in out and "# Tools" in out
    check_same(template, special, CONVERSATIONS["system_user"], add_generation_prompt=True, tools=QWEN_TOOLS)


@pytest.mark.slow
@pytest.mark.llamacpp
@pytest.mark.parametrize("asset", ["smollm2-135m", "qwen2.5-coder-0.5b"])
def test_chat_ids_match_llamacpp(asset, tmp_path):
    """The prompt ids of a real GGUF's chat (template from the GGUF, tokenizer converted by the exporter) equal
    llama.cpp's: llama-cpp-python's Jinja2ChatFormatter renders the same text, and llama.cpp tokenizes it with
    special-token parsing and the model's own BOS rule (add_special, as llama-server does)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from edgespool.errors import UnsupportedModelError
    from edgespool.exporters.gguf_source import open_gguf_model
    from edgespool.runtime.decoder.tokenizer import BundleTokenizer

    path = fetched(asset)
    try:
        spec = open_gguf_model(path).tokenizer()
    except UnsupportedModelError as e:
        pytest.skip(f"the exporter refuses this tokenizer: {e}")
    (tmp_path / "tokenizer.json").write_text(spec.json)
    tok = BundleTokenizer(tmp_path / "tokenizer.json", spec.bos_token_id, spec.eos_token_ids, spec.add_bos)
    st = spec.special_tokens
    fmt = llama_cpp.llama_chat_format.Jinja2ChatFormatter(spec.chat_template, bos_token=st["bos_token"],
                                                          eos_token=st["eos_token"])
    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    for conv in CONVERSATIONS.values():
        text = ChatTemplate(spec.chat_template, spec.special_tokens).render(conv)
        assert text == fmt(messages=conv).prompt
        assert tok.encode_rendered(text) == llm.tokenize(text.encode(), add_bos=True, special=True)


# -- synthetic templates ---------------------------------------------------------------------------------------------
TOJSON = ("{{ messages | tojson }}\n{{ messages | tojson(indent=2) }}\n{{ messages[-1] | tojson(ensure_ascii=True) }}"
          "\n{{ messages[0] | tojson(sort_keys=True, separators=(',', ':')) }}\n{{ tools | tojson }}")

LOOPS = """{%- set ns = namespace(n=0, last='', roles=[]) -%}
{%- for m in messages -%}
    {%- if m.role == 'system' %}{% continue %}{% endif -%}
    {%- if loop.index > 3 %}{% break %}{% endif -%}
    {%- set ns.n = ns.n + 1 %}
    {%- set ns.last = m.role %}
[{{ loop.index0 }}:{{ m.role }}] {{ m.content | trim }}
{% endfor %}
n={{ ns.n }} last={{ ns.last }}
{% if add_generation_prompt %}
    <assistant>
{% endif %}
d={{ dict(a=1, b=messages | length) | tojson }} k={{ dict.fromkeys(['x', 'y'], 0) | tojson }}
"""

GENERATION = ("{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}<a>{{ m.content }}</a>"
              "{% endgeneration %}{% else %}<u>{{ m.content }}</u>{% endif %}{% endfor %}")

SPECIALS = "{{ bos_token }}|{{ eos_token }}|{{ unk_token }}|{{ enable_thinking }}|{{ custom | tojson }}"

REASONING = ("{% for m in messages %}{{ m | tojson }}{% if m.content is defined %}+C{% endif %}"
             "{% if m.reasoning_content %}[{{ m.reasoning_content }}]{% endif %}\n{% endfor %}")

TURNS = ("{{ bos_token }}{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}{{ eos_token }}\n{% endfor %}"
         "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")

SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


@pytest.mark.parametrize("conv", ["unicode", "multi_turn"])
def test_tojson_filter_matches_transformers(conv):
    out = check_same(TOJSON, SPECIAL, CONVERSATIONS[conv], tools=QWEN_TOOLS)
    if conv == "unicode":
        assert "<b>&amp;</b>" in out and "日本語" in out  # no HTML escaping, ensure_ascii=False by default


@pytest.mark.parametrize("gen", [True, False])
def test_loop_controls_namespace_dict_whitespace_match_transformers(gen):
    conv = CONVERSATIONS["multi_turn"] + [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]
    out = check_same(LOOPS, SPECIAL, conv, add_generation_prompt=gen)
    assert "n=2 last=assistant" in out and "<assistant>" in out if gen else "n=2" in out


def test_generation_block_and_continue_final_message_match_transformers():
    conv = CONVERSATIONS["ends_with_assistant"]
    check_same(GENERATION, SPECIAL, conv)
    out = check_same(TURNS, SPECIAL, conv, continue_final_message=True)
    assert out.endswith("<|assistant|>\nhi")
    check_same(TURNS, SPECIAL, conv, add_generation_prompt=True)


def test_special_tokens_and_extra_variables_match_transformers():
    out = check_same(SPECIALS, SPECIAL, CONVERSATIONS["user"], enable_thinking=False, custom={"k": [1, "é"]})
    assert out == '<s>|</s>|<unk>|False|{"k": [1, "é"]}'
    # a variable overrides the special token of the same name, as in transformers
    assert check_same(SPECIALS, SPECIAL, CONVERSATIONS["user"], bos_token="[BOS]", custom=None).startswith("[BOS]|")


def test_none_fields_dropped_and_reasoning_aliased_like_transformers():
    conv = [{"role": "user", "content": "q", "name": None},
            {"role": "assistant", "content": None, "reasoning": "think first"},
            {"role": "assistant", "content": "a", "thinking": "t2"}]
    out = check_same(REASONING, SPECIAL, conv)
    assert '"reasoning_content": "think first"' in out and "null" not in out


def test_strftime_now_matches_transformers(monkeypatch):
    import transformers.utils.chat_template_utils as tcu

    class Frozen(_dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2024, 7, 26, 9, 5, 3)

    monkeypatch.setattr(tcu, "datetime", Frozen)
    monkeypatch.setattr(chat_mod, "datetime", Frozen)
    template = "Today Date: {{ strftime_now('%d %b %Y') }} {{ strftime_now('%H:%M:%S %A') }}\n{{ messages[0].content }}"
    out = check_same(template, SPECIAL, CONVERSATIONS["user"])
    assert out == "Today Date: 26 Jul 2024 09:05:03 Friday\nHello!"


# -- errors --------------------------------------------------------------------------------------------------------
STRICT = ("{% for m in messages %}{% if (m.role == 'user') != (loop.index0 % 2 == 0) %}"
          "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
          "{% endif %}{{ m.content }}{% endfor %}")


def test_raise_exception_is_one_line_error_with_the_templates_message():
    import jinja2

    conv = [SYSTEM, {"role": "user", "content": "x"}]
    with pytest.raises(jinja2.TemplateError, match="roles must alternate"):
        hf_tokenizer(STRICT, SPECIAL).apply_chat_template(conv, tokenize=False)
    with pytest.raises(ChatTemplateError) as e:
        ChatTemplate(STRICT, SPECIAL).render(conv)
    msg = str(e.value)
    assert "raised: Conversation roles must alternate user/assistant/user/assistant/..." in msg and "\n" not in msg
    assert ChatTemplate(STRICT, SPECIAL).render(CONVERSATIONS["user"], False) == "Hello!"


def test_jinja_errors_are_one_line_errors():
    with pytest.raises(ChatTemplateError, match=r"failed \(TypeError\) at line 2: .*concatenate") as e:
        ChatTemplate("{% for m in messages %}\n{{ m.content + m.count }}\n{% endfor %}").render(
            [{"role": "user", "content": "x", "count": 3}])
    assert "\n" not in str(e.value)
    with pytest.raises(ChatTemplateError, match=r"UndefinedError.*has no attribute 'nope'"):
        ChatTemplate("{{ messages[0].nope.deeper }}").render(CONVERSATIONS["user"])
    with pytest.raises(ChatTemplateError, match=r"does not compile: line 2: .*endfor"):
        ChatTemplate("ok\n{% for m in messages %}{{ m }}")
    with pytest.raises(ChatTemplateError, match="SecurityError.*underscore"):
        ChatTemplate("{% set ns = namespace(_x=1) %}").render(CONVERSATIONS["user"])
    with pytest.raises(OptionError, match="empty"):
        ChatTemplate(TURNS, SPECIAL).render([])
    with pytest.raises(OptionError, match="exclude each other"):
        ChatTemplate(TURNS, SPECIAL).render(CONVERSATIONS["user"], True, continue_final_message=True)


def test_sandbox_refuses_python_internals():
    out = ChatTemplate("[{{ messages.__class__ }}]").render(CONVERSATIONS["user"])
    assert out == "[]"  # unsafe attributes are undefined in the sandbox
    with pytest.raises(ChatTemplateError, match="SecurityError"):
        ChatTemplate("{{ messages.append(1) }}").render(CONVERSATIONS["user"])  # immutable sandbox


def test_bundle_without_template_says_how_to_pass_one(synth_bundle):
    from edgespool.runtime.api import load

    m = load(synth_bundle)
    with pytest.raises(ChatTemplateError, match=r"no chat template.*template="):
        m.chat(CONVERSATIONS["user"], max_tokens=2)  # raised at the call, before iterating
    out = m.chat_prompt(CONVERSATIONS["user"], template=TURNS)
    assert out == f"{m.tokenizer.special_tokens().get('bos_token', '')}<|user|>\nHello!" \
                  f"{m.tokenizer.special_tokens().get('eos_token', '')}\n<|assistant|>\n"
    with pytest.raises(ChatTemplateError, match="raised: Conversation roles must alternate"):
        m.chat([SYSTEM, {"role": "user", "content": "x"}], template=STRICT)
    m.close()


# -- export + Model.chat -------------------------------------------------------------------------------------------
TINY_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ '<|' + m.role + '|>' }}\n{{ m.content | trim }}"
                 "{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    """A tiny random llama checkpoint (BPE tokenizer.json with <|bos|>, <|endoftext|>) whose tokenizer_config.json
    has a chat template that emits bos_token, and which asks for BOS (add_bos_token)."""
    pytest.importorskip("torch")
    import tiny_models as tm

    d = tm.make_hf_model("llama", tmp_path_factory.mktemp("chat_hf"), tokenizer="bpe", seed=3)
    tc = json.loads((d / "tokenizer_config.json").read_text())
    tc.update(chat_template=TINY_TEMPLATE, add_bos_token=True)
    (d / "tokenizer_config.json").write_text(json.dumps(tc))
    return d


def _export(src, out: Path) -> Path:
    from edgespool.exporters.compress import QuantPolicy
    from edgespool.exporters.export import export_model

    return export_model(src, out, policy=QuantPolicy(quant="f32"), onnx=False, kernels=False, progress=False).path


def test_hf_tokenizer_config_template_round_trips_into_bundle(tiny_hf, tmp_path):
    from edgespool.exporters.hf import open_hf

    b = _export(open_hf(tiny_hf), tmp_path / "b")
    section = json.loads((b / "manifest.json").read_text())["tokenizer"]
    assert section["chat_template"] == "chat_template.jinja"
    assert section["special_tokens"] == {"bos_token": "<|bos|>", "eos_token": "<|endoftext|>", "unk_token": "<|unk|>"}
    assert (b / "chat_template.jinja").read_bytes() == TINY_TEMPLATE.encode()


def test_hf_template_sources_jinja_file_and_named_list(tmp_path):
    from edgespool.exporters.hf import HFModel

    d = tmp_path / "hf"
    d.mkdir()
    (d / "tokenizer_config.json").write_text(json.dumps({"chat_template": [
        {"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}], "bos_token": {"content": "<s>"}}))
    m = HFModel.__new__(HFModel)  # only the template reading; no weights needed
    m.path = d
    tc = json.loads((d / "tokenizer_config.json").read_text())
    assert m._chat_template(tc) == "D"
    (d / "chat_template.jinja").write_text("J\r\n{{ x }}", newline="")
    # chat_template.jinja wins, read as transformers reads it (text mode: \r\n -> \n; jinja would anyway)
    assert m._chat_template(tc) == "J\n{{ x }}"
    assert m._chat_template({}) == "J\n{{ x }}"
    (d / "chat_template.jinja").unlink()
    assert m._chat_template({}) is None


@pytest.fixture(scope="module")
def tiny_model(tiny_hf, tmp_path_factory):
    from edgespool.exporters.hf import open_hf
    from edgespool.runtime.api import load

    m = load(_export(open_hf(tiny_hf), tmp_path_factory.mktemp("chat_b") / "b"))
    yield m
    m.close()


def test_chat_prompt_and_ids_match_transformers(tiny_hf, tiny_model):
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(tiny_hf)
    for conv in CONVERSATIONS.values():
        text = ref.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        assert tiny_model.chat_prompt(conv) == text
        ids = ref.apply_chat_template(conv, tokenize=True, add_generation_prompt=True, return_dict=False)
        assert tiny_model.chat_ids(conv) == list(ids)
        assert ids[0] == tiny_model.tokenizer.bos_token_id and ids[1] != ids[0]  # one BOS, though add_bos is set


def test_chat_generates_from_exactly_the_rendered_prompt_ids(tiny_model, monkeypatch):
    conv = CONVERSATIONS["multi_turn"]
    want_ids = tiny_model.tokenizer.encode_rendered(tiny_model.chat_prompt(conv))
    seen = []
    orig = tiny_model.engine.generate

    def spy(ids, *a, **kw):
        seen.append(list(ids))
        return orig(ids, *a, **kw)

    monkeypatch.setattr(tiny_model.engine, "generate", spy)
    pieces = list(tiny_model.chat(conv, max_tokens=6, stop=[]))
    assert seen == [want_ids]
    assert tiny_model.stats.prompt_tokens == len(want_ids) and tiny_model.stats.generated_tokens == 6
    greedy = list(tiny_model.generate_ids(want_ids, 6, stop=[]))
    assert "".join(pieces) == tiny_model.tokenizer.decode(greedy)


def test_template_without_bos_gets_the_models_bos(tiny_model):
    no_bos = TINY_TEMPLATE.replace("{{ bos_token }}", "")
    ids = tiny_model.chat_ids(CONVERSATIONS["user"], template=no_bos)
    assert ids[0] == tiny_model.tokenizer.bos_token_id and ids[1] != ids[0]  # llama.cpp: add_bos adds it


def test_gguf_export_stores_the_template(tiny_hf, tmp_path):
    import gguf_tools as gt
    from edgespool.exporters.gguf_source import open_gguf_model
    from edgespool.runtime.api import load

    gt.require_converter()
    path = gt.convert(tiny_hf, tmp_path / "m.gguf", "f32")
    g = open_gguf_model(path)
    assert g.meta("tokenizer.chat_template") == TINY_TEMPLATE  # llama.cpp's converter copied it
    b = _export(g, tmp_path / "b")
    section = json.loads((b / "manifest.json").read_text())["tokenizer"]
    assert (b / section["chat_template"]).read_text() == TINY_TEMPLATE
    assert section["special_tokens"]["bos_token"] == "<|bos|>"
    assert section["special_tokens"]["eos_token"] == "<|endoftext|>"
    with load(b) as m:
        conv = CONVERSATIONS["system_user"]
        assert m.chat_prompt(conv) == check_same(TINY_TEMPLATE, section["special_tokens"], conv,
                                                 add_generation_prompt=True)
