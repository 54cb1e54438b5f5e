secrets
?.
A