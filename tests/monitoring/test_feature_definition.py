"""One definition of the behaviour features: the simulator's accounts, as repayment events,
give training exactly the features a running monitoring service computes from them."""

import numpy as np

from creditline.monitoring.v1 import monitoring_service_pb2 as pb
from services.monitoring.converters import MAX_BATCH, event_message
from services.scoring.modelling import simulator
from services.scoring.modelling.simulator import BEHAVIOUR_FEATURES

NAMES = [spec.name for spec in BEHAVIOUR_FEATURES]


def test_training_features_are_exactly_what_a_running_monitoring_computes(monitoring):
    month = 24
    accounts = [
        h for h in simulator.simulate_accounts(80, seed=11, months=30) if h.opened_month <= month
    ]
    messages = [
        event_message(event, "CNY")
        for history in accounts
        for event in simulator.account_events(history, month)
    ]
    for start in range(0, len(messages), MAX_BATCH):
        batch = pb.EventBatch(batch_id=f"sim-{start}", events=messages[start : start + MAX_BATCH])
        ack = monitoring.PublishEvents(pb.PublishEventsRequest(batch=batch)).ack
        assert ack.applied == len(batch.events)

    training = simulator.feature_matrix(accounts, month)
    served = np.full_like(training, np.nan)
    for row, history in enumerate(accounts):
        request = pb.GetAccountRiskRequest(account_id=simulator.account_id_of(history))
        profile = dict(monitoring.GetAccountRisk(request).risk.profile)
        assert profile == simulator.profile_at(history, month)  # float64, and the same names
        served[row] = [profile.get(name, np.nan) for name in NAMES]
    np.testing.assert_array_equal(served.astype(np.float32), training)  # NaN where NaN

    # The comparison covers what tells the definitions apart: unknown income, partial and
    # late repayments, interest, inquiries and accounts past due.
    column = {name: training[:, j] for j, name in enumerate(NAMES)}
    assert np.isnan(column["debt_to_income"]).any() and (column["debt_to_income"] > 0).any()
    assert (column["partial_payments_6m"] > 0).any() and (column["max_dpd_12m"] > 0).any()
    assert (column["days_past_due"] > 0).any() and (column["inquiries_30d"] > 0).any()
    assert (column["utilisation"] > 1).any()  # interest takes a fully drawn line over
    assert len(set(column["months_on_book"])) > 5
