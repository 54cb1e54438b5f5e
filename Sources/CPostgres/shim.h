/* libpq's types and constants only: the functions are looked up at run time
   (SecretfsStore/LibPQ.swift), so nothing links against libpq. Debian puts
   the header under postgresql/ (libpq-dev). */
#include <postgresql/libpq-fe.h>
