"""Notifications: which channels want an event (``filters``), what they say (``message``), how they are sent
(``linear``, ``webhook``, ``monitor.aws.sns``) and the at-least-once delivery from the outbox (``outbox``)."""
