import json

from benchmarks.same_text import compare, main


def test_compare_counts_the_same_and_names_the_others():
    a = {"1.mp3": "甲", "2.mp3": "乙", "3.mp3": "丙"}
    b = {"1.mp3": "甲", "2.mp3": "丁", "4.mp3": "戊"}
    assert compare(a, b) == (1, ["2.mp3", "3.mp3", "4.mp3"])
    assert compare(a, dict(a)) == (3, [])


def test_compare_exits_1_on_any_difference(tmp_path, capsys):
    same, other = tmp_path / "a.json", tmp_path / "b.json"
    same.write_text(json.dumps({"1.mp3": "甲"}))
    other.write_text(json.dumps({"1.mp3": "乙"}))
    assert main(["--compare", str(same), str(same)]) == 0
    assert main(["--compare", str(same), str(other)]) == 1
    assert "1.mp3: '甲' != '乙'" in capsys.readouterr().out
