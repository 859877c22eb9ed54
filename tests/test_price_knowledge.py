"""experiments/learning/price_knowledge.py: the teacher that knows prices and load only a few steps ahead."""

import importlib.util
from pathlib import Path

import numpy as np

from agents.evaluate import episodes_for, rollout
from agents.mpc import ModelPredictiveControl
from envs.core import reset
from envs.observation import observe
from envs.site import load_site

ROOT = Path(__file__).resolve().parents[1]
PARAMS = load_site("v2g_workplace", horizon_steps=16, start_hour=9)
SEED, DAYS = 5, 2


def _script():
    spec = importlib.util.spec_from_file_location("price_knowledge",
                                                  ROOT / "experiments" / "learning" / "price_knowledge.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_noise_free_days_keep_the_sessions_and_lose_the_price_and_load_noise():
    knowledge = _script()
    days = episodes_for(PARAMS, None, DAYS, SEED)
    smooth = knowledge.without_noise(PARAMS, SEED, DAYS)
    knowledge.check_same_sessions(days, smooth)
    assert not np.allclose(days.price_buy_eur_kwh, smooth.price_buy_eur_kwh)
    def one_shape(prices):  # one hourly profile, scaled on weekends
        ratio = prices[1] / prices[0]
        return np.allclose(ratio, ratio[0])

    assert one_shape(smooth.price_buy_eur_kwh) and not one_shape(days.price_buy_eur_kwh)
    assert not np.allclose(reset(PARAMS, days).node_exo_kw, reset(PARAMS, smooth).node_exo_kw)


def test_the_window_is_real_for_the_known_steps_and_expected_after():
    knowledge = _script()
    days = episodes_for(PARAMS, None, DAYS, SEED)
    smooth = knowledge.without_noise(PARAMS, SEED, DAYS)
    planner = knowledge.PlansOnForecast(ModelPredictiveControl(PARAMS, horizon_steps=8), smooth, 3)
    planner.begin(PARAMS, days)
    planner.planner.t = 4
    window = planner.planner.window(1, observe(PARAMS, reset(PARAMS, days))[1])
    np.testing.assert_array_equal(window.price_buy_eur_kwh[:3], days.price_buy_eur_kwh[1, 4:7])
    np.testing.assert_array_equal(window.price_buy_eur_kwh[3:], smooth.price_buy_eur_kwh[1, 7:12])
    np.testing.assert_array_equal(window.price_sell_eur_kwh[3:], smooth.price_sell_eur_kwh[1, 7:12])
    np.testing.assert_array_equal(window.exo_kw[:3], reset(PARAMS, days).node_exo_kw[1, 4:7])
    np.testing.assert_array_equal(window.exo_kw[3:], reset(PARAMS, smooth).node_exo_kw[1, 7:12])


def test_knowing_the_whole_window_plans_as_the_plain_teacher():
    knowledge = _script()
    days = episodes_for(PARAMS, None, DAYS, SEED)
    smooth = knowledge.without_noise(PARAMS, SEED, DAYS)
    plain = rollout(ModelPredictiveControl(PARAMS, horizon_steps=6), PARAMS, days)
    knowing = rollout(knowledge.PlansOnForecast(ModelPredictiveControl(PARAMS, horizon_steps=6), smooth, 6),
                      PARAMS, days)
    blind = rollout(knowledge.PlansOnForecast(ModelPredictiveControl(PARAMS, horizon_steps=6), smooth, 1),
                    PARAMS, days)
    np.testing.assert_array_equal(knowing["totals"], plain["totals"])
    assert not np.array_equal(blind["totals"], plain["totals"])
