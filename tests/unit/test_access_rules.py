"""Who may do what (tuner/access.py): modes, owners, the password gate, model choices."""

import pytest

from tuner.access import (AccessDenied, Caller, Mode, PasswordGate, api_key_ok, caller_for, check_model_choice,
                          configured_mode, may, visitor_models)
from tuner.models import EMBEDDED_MODEL


def test_the_mode_follows_where_the_app_runs_unless_configured():
    assert configured_mode({}, hosted=False) == Mode.LOCAL
    assert configured_mode({}, hosted=True) == Mode.OWNER
    assert configured_mode({"TUNER_OWNER_PASSWORD": "x"}, hosted=False) == Mode.OWNER
    assert configured_mode({"TUNER_MODE": "demo"}, hosted=False) == Mode.DEMO
    assert configured_mode({"SPACE_ID": "carol/studio"}) == Mode.OWNER


def test_the_space_author_or_a_listed_owner_is_the_owner_and_nobody_is_in_demo_mode():
    env = {"SPACE_AUTHOR_NAME": "Carol", "TUNER_OWNERS": "dave, erin"}
    assert caller_for(Mode.OWNER, "carol", env=env).owner
    assert caller_for(Mode.OWNER, "erin", env=env).owner
    assert not caller_for(Mode.OWNER, "mallory", env=env).owner
    assert caller_for(Mode.OWNER, "", password_session=True, env=env).owner
    assert not caller_for(Mode.DEMO, "carol", env=env).owner
    assert caller_for(Mode.LOCAL).owner


def test_visitors_may_only_take_public_actions():
    visitor, owner = Caller(), Caller("carol", True)
    assert may(Mode.OWNER, visitor, "public") and not may(Mode.OWNER, visitor, "owner")
    assert may(Mode.OWNER, owner, "owner")
    assert not may(Mode.DEMO, owner, "owner")
    assert may(Mode.LOCAL, caller_for(Mode.LOCAL), "owner")


def test_the_password_is_checked_and_wrong_guesses_are_rate_limited_per_client():
    gate = PasswordGate("s3cret", limit=3, window=60)
    assert not gate.check("nope", "1.2.3.4")
    assert gate.check("s3cret", "1.2.3.4")
    for _ in range(2):
        assert not gate.check("nope", "1.2.3.4")
    with pytest.raises(AccessDenied, match="Too many wrong passwords"):
        gate.check("s3cret", "1.2.3.4")
    assert gate.check("s3cret", "5.6.7.8")  # another client is not locked out
    assert not PasswordGate("").check("", "x")  # no password configured: nobody gets in by password


def test_the_api_needs_a_key_in_owner_mode_only():
    env = {"TUNER_API_KEY": "key-123"}
    assert api_key_ok(Mode.LOCAL, "", env) and api_key_ok(Mode.DEMO, "", env)
    assert not api_key_ok(Mode.OWNER, "", env)
    assert not api_key_ok(Mode.OWNER, "Bearer wrong", env)
    assert api_key_ok(Mode.OWNER, "Bearer key-123", env)


def test_visitors_pick_models_from_the_list_and_the_owner_only_from_the_allowed_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNER_MODEL_ROOTS", str(tmp_path / "models"))
    visitor, owner = Caller(), Caller("carol", True)
    for model in visitor_models():
        check_model_choice(Mode.OWNER, visitor, model)
    check_model_choice(Mode.OWNER, visitor, EMBEDDED_MODEL)
    with pytest.raises(AccessDenied, match="Choose a model from the list"):
        check_model_choice(Mode.OWNER, visitor, "/etc")
    with pytest.raises(AccessDenied, match="Choose a model from the list"):
        check_model_choice(Mode.DEMO, owner, "someone/else")
    (tmp_path / "models" / "mine").mkdir(parents=True)
    check_model_choice(Mode.OWNER, owner, str(tmp_path / "models" / "mine"))
    check_model_choice(Mode.OWNER, owner, "Qwen/Qwen2.5-0.5B-Instruct")  # a hub id
    with pytest.raises(AccessDenied, match="outside the folders"):
        check_model_choice(Mode.OWNER, owner, str(tmp_path))
    with pytest.raises(AccessDenied, match="outside the folders"):
        check_model_choice(Mode.OWNER, owner, str(tmp_path / "models" / ".." / ".."))
    check_model_choice(Mode.LOCAL, caller_for(Mode.LOCAL), "/anything")


def test_a_model_asking_to_run_its_own_code_is_refused_unless_the_owner_allowed_it(tmp_path, monkeypatch):
    from tuner.chat import ChatLoadError, load_chat_model
    from tuner.models import remote_code_allowed

    folder = tmp_path / "remote"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama", "auto_map": {"AutoModelForCausalLM": "evil.M"}}')
    (folder / "evil.py").write_text("open('ran', 'w').write('the model ran its own code')\n")
    with pytest.raises(ChatLoadError, match="trust_remote_code"):
        load_chat_model("base", str(folder))
    assert not (tmp_path / "ran").exists() and not remote_code_allowed(str(folder))
    monkeypatch.setenv("TUNER_TRUSTED_MODELS", f"other/model,{folder}")
    assert remote_code_allowed(str(folder))
