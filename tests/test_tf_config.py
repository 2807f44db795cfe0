"""tf_config: TF_CONFIG read once, malformed values refused in one line naming the value."""

import pytest

from generalist_tf import tf_config

TWO_WORKERS = '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": %d}}'
WITH_CHIEF = '{"cluster": {"chief": ["a:1"], "worker": ["b:2"]}, "task": {"type": "%s"}}'


@pytest.mark.parametrize("raw", ["", "  ", "{}"])
def test_unset_or_empty_means_a_local_run(raw):
    assert tf_config.parse({"TF_CONFIG": raw}) is None
    assert tf_config.parse({}) is None


@pytest.mark.parametrize(
    "raw, multi, chief, name",
    [
        (TWO_WORKERS % 0, True, True, "worker-0"),
        (TWO_WORKERS % 1, True, False, "worker-1"),
        (WITH_CHIEF % "chief", True, True, "chief-0"),
        (WITH_CHIEF % "worker", True, False, "worker-0"),
        (
            '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}',
            False,
            True,
            "worker-0",
        ),
    ],
)
def test_a_valid_cluster(raw, multi, chief, name):
    parsed = tf_config.parse({"TF_CONFIG": raw})
    assert (parsed.is_multi_worker, parsed.is_chief, parsed.task_name) == (multi, chief, name)


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"task": {"type": "worker"}}', "'cluster' must map task types"),
        (
            '{"cluster": {"worker": "a:1"}, "task": {"type": "worker"}}',
            "non-empty list of host:port",
        ),
        ('{"cluster": {"worker": ["nohostport"]}, "task": {"type": "worker"}}', "host:port"),
        (
            '{"cluster": {"worker": ["a:1"], "ps": ["b:2"]}, "task": {"type": "worker"}}',
            "task type 'ps' is not supported",
        ),
        ('{"cluster": {"chief": ["a:1", "b:2"]}, "task": {"type": "chief"}}', "at most one chief"),
        ('{"cluster": {"worker": ["a:1", "b:2"]}}', "'task' with this process's"),
        (
            '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "chief"}}',
            "task type 'chief' is not in the cluster",
        ),
        (TWO_WORKERS % 2, "task index 2 is outside the cluster's 2 worker"),
        (TWO_WORKERS % -1, "task index -1 is outside"),
        (
            '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": "0"}}',
            "task index '0' must be an integer",
        ),
    ],
)
def test_a_malformed_value_is_refused_naming_it(raw, fragment):
    with pytest.raises(ValueError) as error:
        tf_config.parse({"TF_CONFIG": raw})
    text = str(error.value)
    assert text.startswith("TF_CONFIG=") and fragment in text and "\n" not in text


def test_a_long_value_is_shortened_in_the_message():
    raw = '{"cluster": {"worker": [%s]}}' % ", ".join(f'"h{i}:1"' for i in range(50))
    with pytest.raises(ValueError) as error:
        tf_config.parse({"TF_CONFIG": raw})
    assert "..." in str(error.value) and len(str(error.value)) < 300
