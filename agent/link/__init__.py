"""The MQTT link: session, presence, topics, credentials; imports no other part."""
