/* nnp: the nonewprivs image's program, installed setuid root. It prints the effective uid, which
 * tells the no_new_privs specs whether the setuid bit took effect. */
#include <stdio.h>
#include <unistd.h>

int main(void) {
    printf("Effective uid: %d\n", (int)geteuid());
    return 0;
}
