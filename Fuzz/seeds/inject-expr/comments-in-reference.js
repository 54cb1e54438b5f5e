secrets /* c */ . /* d */ A + secrets // line
.B