-- Which handling of a message stored each event. A claim whose commit was in doubt (the connection dropped
-- before the reply came) is written again; finding its own token there tells the handler that the event is
-- still its own to deliver, and not a re-publish that was delivered already.
ALTER TABLE events ADD COLUMN claim_token uuid NULL;
