secrets.A
.length