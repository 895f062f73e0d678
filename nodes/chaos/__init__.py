"""Fault injection and a message checker for the reliability battery.

:mod:`nodes.chaos.checker` sorts every message id of a run into delivered,
lost, duplicated and unexpected (after RabbitMQ's and Jepsen's checkers);
:mod:`nodes.chaos.workload` drives acknowledged traffic through the SDK and
records what the senders were told and what the receivers got. tests/chaos
uses both on real node processes; so can anyone testing their own mesh.
"""
