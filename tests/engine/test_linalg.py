"""The engine's one regularised solve (engine.linalg.solve_ridged), checked against hand-solved systems."""
import numpy as np

from tract7dt_mpi.engine import linalg, lm


def test_solve_ridged_one_system_and_a_batch():
    M = np.array([[4.0, 2.0], [2.0, 3.0]])
    # (M + diag(1, 0)) x = (7, 5): [[5, 2], [2, 3]] x = (7, 5) -> x = (11/11, 11/11) = (1, 1)
    assert np.allclose(linalg.solve_ridged(M, np.array([7.0, 5.0]), np.array([1.0, 0.0])), [1.0, 1.0])
    G = np.stack([M, 2 * np.eye(2)])
    x = linalg.solve_ridged(G, np.array([[6.0, 5.0], [2.0, 4.0]]), 0.0)
    assert np.allclose(x, [[1.0, 1.0], [1.0, 2.0]])


def test_solve_ridged_singular_falls_back_to_least_squares():
    M = np.array([[1.0, 1.0], [1.0, 1.0]])                 # rank 1, no ridge
    x = linalg.solve_ridged(M, np.array([2.0, 2.0]), 0.0)
    assert np.allclose(x, [1.0, 1.0])                       # minimum-norm solution
    xb = linalg.solve_ridged(np.stack([M, np.eye(2)]), np.array([[2.0, 2.0], [3.0, 4.0]]), 0.0)
    assert np.allclose(xb, [[1.0, 1.0], [3.0, 4.0]])


def test_batched_solve_and_inverse_agree_and_an_empty_row_stays_solvable():
    G = np.array([[[4.0, 0.0], [0.0, 0.0]]])                # a source with no information at all
    x = linalg.solve_batched(G, np.array([[8.0, 0.0]]))
    assert np.allclose(x, [[2.0, 0.0]])
    assert np.allclose(linalg.inv_batched(G)[0] @ np.array([8.0, 0.0]), x[0])


def test_lm_step_is_the_damped_solve():
    H = np.array([[4.0, 1.0], [1.0, 2.0]])
    g = np.array([1.0, 1.0])
    lam = 0.5
    step, _ = lm.lm_step(H, g, lam, np.array([0.5, 0.5]), np.zeros(2), np.ones(2), np.full(2, 10.0),
                         np.array([0, 1]), 2)
    want = np.linalg.solve(H + np.diag((lam + 1e-10) * np.diag(H)), g)
    assert np.allclose(step, want, rtol=1e-12)
