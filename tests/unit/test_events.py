"""The event bus: publishers never block, slow subscribers lose their oldest events (counted), history replays."""

from __future__ import annotations

import threading

from edgeslm.events import EventBus


def test_subscribers_get_events_in_order_filtered_by_kind():
    bus = EventBus()
    everything = bus.subscribe()
    intents = bus.subscribe(kinds=["intent"])
    bus.publish("button", pin=17, edge="press")
    bus.publish("intent", intent="lights_on")
    assert [e.kind for e in everything.drain()] == ["button", "intent"]
    got = intents.drain()
    assert [e.data for e in got] == [{"intent": "lights_on"}] and got[0].id == 2


def test_a_slow_subscriber_never_blocks_the_publisher_and_drops_its_oldest():
    bus = EventBus()
    slow = bus.subscribe(max_queue=3)
    done = threading.Event()

    def publish_many():
        for i in range(1000):
            bus.publish("button", n=i)
        done.set()

    threading.Thread(target=publish_many).start()
    assert done.wait(10), "publishing blocked on a subscriber that never reads"
    kept = slow.drain()
    assert [e.data["n"] for e in kept] == [997, 998, 999]
    assert slow.take_dropped() == 997 and slow.take_dropped() == 0


def test_since_replays_kept_history_then_new_events():
    bus = EventBus(history=2)
    for n in range(4):
        bus.publish("model", n=n)
    late = bus.subscribe(since=2)
    bus.publish("model", n=4)
    assert [e.data["n"] for e in late.drain()] == [2, 3, 4]  # ids 3, 4 kept; id 2 fell out of the history


def test_close_wakes_a_waiting_subscriber_and_wake_callbacks_fire():
    bus = EventBus()
    woken = []
    subscription = bus.subscribe(wake=lambda: woken.append(1))
    result = []
    waiter = threading.Thread(target=lambda: result.append(subscription.get(timeout_s=10)))
    waiter.start()
    bus.publish("error", code="x")
    waiter.join(5)
    assert result[0].kind == "error" and woken
    blocked = bus.subscribe()
    waiter = threading.Thread(target=lambda: result.append(blocked.get(timeout_s=10)))
    waiter.start()
    bus.close()
    waiter.join(5)
    assert not waiter.is_alive() and result[-1] is None and bus.subscribers == 0
