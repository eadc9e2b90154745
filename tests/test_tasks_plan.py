"""The plan hash reads the image list with the one image-list parser (fields and HDU suffixes)."""
from tract7dt_mpi import tasks
from tract7dt_mpi.config import config_from_dict


def test_listed_image_files_use_the_image_list_parser(tmp_path):
    for name in ("a.fits", "b.fits", "w.fits"):
        (tmp_path / name).write_bytes(b"SIMPLE  =" + b"x" * 100)
    (tmp_path / "list.txt").write_text("# two images\na.fits weight=w.fits\n\nb.fits[1]\n")
    cfg = config_from_dict({"inputs": {"input_catalog": "cat.csv", "image_list_file": "list.txt"}},
                           str(tmp_path))
    assert tasks.listed_image_files(cfg) == [str(tmp_path / "a.fits"), str(tmp_path / "b.fits")]
    cfg = config_from_dict({"inputs": {"input_catalog": "cat.csv", "image_list_file": "none.txt"}},
                           str(tmp_path))
    assert tasks.listed_image_files(cfg) == []
