"""The rules an object must pass: tags, properties, images, DynamoDB item size, reason
tokens, and the gateway's rate limit."""
