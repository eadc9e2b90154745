from tract7dt_mpi.engine.tractor_backend import INSTALL_HINT, tractor_available


def test_tractor_available_reports_reason():
    ok, why = tractor_available()
    assert isinstance(ok, bool)
    if not ok:
        assert why and "Tractor" in why
    assert "dstndstn/tractor" in INSTALL_HINT and "native" in INSTALL_HINT
